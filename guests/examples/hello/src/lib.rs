//! `hello`: greets its input. The smallest PSL function: input in, output out, one log line.

psl_guest::entry!(hello);

fn hello(input: &[u8]) -> psl_guest::Result<Vec<u8>> {
    let name = std::str::from_utf8(input)
        .map_err(psl_guest::Error::msg)?
        .trim();
    let name = if name.is_empty() { "world" } else { name };
    psl_guest::log(psl_guest::Level::Info, format!("greeting {name}"));
    Ok(format!("Hello, {name}!").into_bytes())
}
