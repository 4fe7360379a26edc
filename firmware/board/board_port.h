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

// What the agent uses of an ESP32's `machine`, added to the Unix port's own machine module (C,
// firmware/board/_board/hw.c): importing it costs no GC heap, as on a board.
struct _mp_obj_fun_builtin_fixed_t;
struct _mp_obj_fun_builtin_var_t;
struct _mp_obj_type_t;
extern const struct _mp_obj_fun_builtin_fixed_t sim_machine_reset_obj;
extern const struct _mp_obj_fun_builtin_fixed_t sim_machine_reset_cause_obj;
extern const struct _mp_obj_fun_builtin_fixed_t sim_machine_unique_id_obj;
extern const struct _mp_obj_fun_builtin_var_t sim_machine_freq_obj;
extern const struct _mp_obj_type_t sim_machine_wdt_type;
#define MICROPY_PY_MACHINE_EXTRA_GLOBALS \
    { MP_ROM_QSTR(MP_QSTR_reset), MP_ROM_PTR(&sim_machine_reset_obj) }, \
    { MP_ROM_QSTR(MP_QSTR_reset_cause), MP_ROM_PTR(&sim_machine_reset_cause_obj) }, \
    { MP_ROM_QSTR(MP_QSTR_unique_id), MP_ROM_PTR(&sim_machine_unique_id_obj) }, \
    { MP_ROM_QSTR(MP_QSTR_freq), MP_ROM_PTR(&sim_machine_freq_obj) }, \
    { MP_ROM_QSTR(MP_QSTR_WDT), MP_ROM_PTR(&sim_machine_wdt_type) }, \
    { MP_ROM_QSTR(MP_QSTR_PWRON_RESET), MP_ROM_INT(1) }, \
    { MP_ROM_QSTR(MP_QSTR_HARD_RESET), MP_ROM_INT(2) }, \
    { MP_ROM_QSTR(MP_QSTR_WDT_RESET), MP_ROM_INT(3) }, \
    { MP_ROM_QSTR(MP_QSTR_DEEPSLEEP_RESET), MP_ROM_INT(4) }, \
    { MP_ROM_QSTR(MP_QSTR_SOFT_RESET), MP_ROM_INT(5) },

#endif
