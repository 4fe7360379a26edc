// Force-included (-include) into every file of the simulated board's Unix port.
// The GC heap grows as on the ESP32 port (ports/esp32/mpconfigport.h): MicroPython's split heap
// with automatic growth, new areas taken from the modelled ESP-IDF heap (firmware/board/_board).
#ifndef SIM_BOARD_PORT_H
#define SIM_BOARD_PORT_H
#include "mbedtls_esp32.h"

#define MICROPY_GC_SPLIT_HEAP (1)
#define MICROPY_GC_SPLIT_HEAP_AUTO (1)
void *sim_gc_area_alloc(size_t size);
void sim_gc_area_free(void *ptr);
#define MP_PLAT_ALLOC_HEAP(size) sim_gc_area_alloc(size)
#define MP_PLAT_FREE_HEAP(ptr) sim_gc_area_free(ptr)

#endif
