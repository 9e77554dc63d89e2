/* PSL guest ABI for C (clang --target=wasm32-wasip1 with wasi-libc).
 *
 * Export `int32_t psl_run(void)` (0 = success) or a plain `main`.
 * Return codes: >= 0 success (often a length); negative values are PSL_E* below.
 * Bad pointers, oversized keys/values, too many calls or a passed deadline end the
 * invocation with a typed error; they are not returned as codes.
 * Semantics: `psl_kv_put` is applied locally at once and is durable at `psl_flush` or
 * `psl_unlock`. See docs/abi.md.
 */
#ifndef PSL_H
#define PSL_H

#include <stdint.h>

#define PSL_IMPORT(name) __attribute__((import_module("psl"), import_name(name)))

#define PSL_OK 0
#define PSL_ENOTFOUND (-1)
#define PSL_ENOTHELD (-2)
#define PSL_ELOCKTIMEOUT (-3)
#define PSL_EALREADYHELD (-4)
#define PSL_EFENCED (-5)
#define PSL_EUNAVAILABLE (-6)
#define PSL_ESTATELIMIT (-7)
#define PSL_ENOTHINGPENDING (-8)

#define PSL_LOCK_READ 0
#define PSL_LOCK_WRITE 1

#define PSL_LOG_DEBUG 0
#define PSL_LOG_INFO 1
#define PSL_LOG_WARN 2
#define PSL_LOG_ERROR 3

PSL_IMPORT("input_len") int32_t psl_input_len(void);
/* Copies up to `len` input bytes to `buf`; returns the number copied. */
PSL_IMPORT("input_read") int32_t psl_input_read(uint8_t *buf, int32_t len);
/* Appends to the output. */
PSL_IMPORT("output_write") int32_t psl_output_write(const uint8_t *buf, int32_t len);
/* Returns the value's full length (copied if it fits in `out_cap`, else kept for
 * psl_kv_take), or PSL_ENOTFOUND. */
PSL_IMPORT("kv_get") int64_t psl_kv_get(const uint8_t *key, int32_t key_len, uint8_t *out, int32_t out_cap);
/* Copies the value kept by the last kv_get/kv_scan that did not fit. */
PSL_IMPORT("kv_take") int64_t psl_kv_take(uint8_t *out, int32_t out_cap);
PSL_IMPORT("kv_put") int32_t psl_kv_put(const uint8_t *key, int32_t key_len, const uint8_t *value, int32_t value_len);
/* Returns 1 if the key existed, 0 if not. */
PSL_IMPORT("kv_delete") int32_t psl_kv_delete(const uint8_t *key, int32_t key_len);
/* Result: u32 count, then (u32 key_len, key, u32 value_len, value)*, little-endian. */
PSL_IMPORT("kv_scan") int64_t psl_kv_scan(const uint8_t *prefix, int32_t prefix_len, int32_t limit, uint8_t *out, int32_t out_cap);
PSL_IMPORT("lock") int32_t psl_lock(const uint8_t *name, int32_t name_len, int32_t mode);
PSL_IMPORT("unlock") int32_t psl_unlock(const uint8_t *name, int32_t name_len);
PSL_IMPORT("flush") int32_t psl_flush(void);
PSL_IMPORT("log") int32_t psl_log(int32_t level, const uint8_t *msg, int32_t len);
/* Sets the error message reported when psl_run returns non-zero. */
PSL_IMPORT("fail") int32_t psl_fail(const uint8_t *msg, int32_t len);

#endif
