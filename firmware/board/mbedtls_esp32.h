// mbedTLS settings of the simulated ESP32 board, force-included (-include) into the mbedTLS
// library build and the Unix port, so both see the same configuration.
// - Record buffers as the ESP32 firmware has them: ports/esp32/boards/sdkconfig.base sets
//   CONFIG_MBEDTLS_ASYMMETRIC_CONTENT_LEN, whose ESP-IDF defaults are 16384 in, 4096 out.
// - Every allocation mbedTLS makes goes to the modelled ESP-IDF heap (firmware/board/_board),
//   as on a board, where mbedTLS's calloc is ESP-IDF's heap_caps_calloc.
#ifndef SIM_MBEDTLS_ESP32_H
#define SIM_MBEDTLS_ESP32_H
#include <stddef.h>

#define MBEDTLS_SSL_IN_CONTENT_LEN 16384
#define MBEDTLS_SSL_OUT_CONTENT_LEN 4096

#define MBEDTLS_PLATFORM_MEMORY
#define MBEDTLS_PLATFORM_CALLOC_MACRO sim_idf_calloc
#define MBEDTLS_PLATFORM_FREE_MACRO sim_idf_free
void *sim_idf_calloc(size_t n, size_t size);
void sim_idf_free(void *ptr);

#endif
