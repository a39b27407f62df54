/* CRC32C (Castagnoli), as MPA puts it in every FPDU (RFC 5044 section 4.4). */
#ifndef SMBDIRECT_WIRE_CRC32C_H
#define SMBDIRECT_WIRE_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Continue a CRC: start with crc = 0; crc32c(crc32c(0, a), b) == crc32c(0, a || b). */
uint32_t wire_crc32c(uint32_t crc, const uint8_t *data, size_t len);

/* The same, always by table (to test one against the other). */
uint32_t wire_crc32c_table(uint32_t crc, const uint8_t *data, size_t len);

/* Whether the SSE4.2 instruction is in use (decided once, at the first call). */
int wire_crc32c_hardware(void);

#endif
