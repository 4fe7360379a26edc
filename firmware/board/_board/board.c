// The simulated ESP32's ESP-IDF heap (docs/board-model.md), built into the board's Unix port as
// the module `_board` (a board has no such module; the hardware modules in hw.c use it).
//
// The heap is a few regions of fixed size, read once from the environment at start-up:
//   SIM_IDF_HEAP=14336,83968   internal RAM regions (bytes free after boot, Wi-Fi connected)
//   SIM_IDF_PSRAM=4128768      an external (PSRAM) region, if the board has one
// Without SIM_IDF_HEAP nothing is capped and the GC heap never grows (a plain Unix port).
// Allocations are first fit over the regions, each must fit in one region, as ESP-IDF's
// heap_caps_malloc; with PSRAM, blocks up to 8 KB try internal RAM first and larger ones PSRAM
// first (CONFIG_SPIRAM_MALLOC_ALWAYSINTERNAL=8192 in ports/esp32/boards/sdkconfig.spiram).
// Every block costs its size rounded up to 4 bytes plus a 4-byte header (ESP-IDF's TLSF heap).
// Its clients: mbedTLS (mbedtls_esp32.h) and the GC's new heap areas (board_port.h).
//
// SIM_GC_TRACE=1: each new live high-water (after a collection) printed on stderr as it is seen,
// between the board's console lines: where in the agent's run the peak is; and each GC area the
// heap takes from or gives back to the IDF heap, with the IDF heap's use after it, and the IDF
// heap's high-water each time it rises by 1 KB or more since the last one printed.
// SIM_MEM_REPORT=FILE: at exit (normal, machine.reset(), or SIGTERM: how a bench powers a board
// off) one JSON line of high-water marks is appended to FILE.
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "py/gc.h"
#include "py/mpstate.h"
#include "py/runtime.h"

#define MAX_REGIONS (4)
#define BLOCK_HEADER (4)
#define MIN_BLOCK (12)
#define ALWAYS_INTERNAL (8192)
// Where the model keeps its own record of a block (not counted: the board's header is).
#define SIM_HEADER (32)

typedef struct {
    size_t total;
    size_t free;
    size_t min_free;
    bool external;
} region_t;

static region_t regions[MAX_REGIONS];
static int n_regions;
static bool modelled;
static size_t budget, used, peak_used, peak_printed;
static size_t grown, peak_grown;  // bytes of GC heap areas taken from the budget
static size_t gc_max_live;
static const char *report_path;
static bool trace;  // SIM_GC_TRACE: print each new live high-water on stderr (diagnostics)

extern long heap_size;  // ports/unix/main.c: the first GC area (-X heapsize)

static void report(void) {
    if (report_path == NULL) {
        return;
    }
    FILE *f = fopen(report_path, "a");
    if (f == NULL) {
        return;
    }
    fprintf(f, "{\"idf_total\": %lu, \"idf_min_free\": %lu, \"gc_first\": %ld, "
        "\"gc_max_total\": %lu, \"gc_max_live\": %lu, \"modelled\": %s}\n",
        (unsigned long)budget, (unsigned long)(budget - peak_used), heap_size,
        (unsigned long)(heap_size + peak_grown), (unsigned long)gc_max_live,
        modelled ? "true" : "false");
    fclose(f);
}

static void on_sigterm(int sig) {
    report();
    _exit(128 + sig);
}

static void add_regions(const char *spec, bool external) {
    while (spec != NULL && *spec && n_regions < MAX_REGIONS) {
        char *end;
        unsigned long n = strtoul(spec, &end, 10);
        if (end == spec) {
            break;
        }
        regions[n_regions].total = regions[n_regions].free = regions[n_regions].min_free = n;
        regions[n_regions].external = external;
        budget += n;
        n_regions++;
        spec = *end == ',' ? end + 1 : NULL;
    }
}

__attribute__((constructor)) static void sim_board_init(void) {
    const char *internal = getenv("SIM_IDF_HEAP");
    if (internal != NULL && *internal) {
        modelled = true;
        add_regions(internal, false);
        add_regions(getenv("SIM_IDF_PSRAM"), true);
    }
    trace = getenv("SIM_GC_TRACE") != NULL;
    report_path = getenv("SIM_MEM_REPORT");
    if (report_path != NULL && !*report_path) {
        report_path = NULL;
    }
    atexit(report);
    if (report_path != NULL) {
        signal(SIGTERM, on_sigterm);
    }
}

static size_t cost(size_t n) {
    n = (n + 3) & ~(size_t)3;
    return (n < MIN_BLOCK ? MIN_BLOCK : n) + BLOCK_HEADER;
}

static int pick(size_t need, bool external_first) {
    for (int pass = 0; pass < 2; pass++) {
        bool want = pass == 0 ? external_first : !external_first;
        for (int i = 0; i < n_regions; i++) {
            if (regions[i].external == want && regions[i].free >= need) {
                return i;
            }
        }
    }
    return -1;
}

typedef struct {
    size_t size;
    size_t cost;
    int region;
} block_t;

void *sim_idf_malloc(size_t size) {
    size_t need = cost(size);
    int r = -1;
    if (modelled) {
        r = pick(need, size > ALWAYS_INTERNAL);
        if (r < 0) {
            return NULL;
        }
    }
    char *p = malloc(SIM_HEADER + size);
    if (p == NULL) {
        return NULL;
    }
    block_t *b = (block_t *)p;
    b->size = size;
    b->cost = need;
    b->region = r;
    if (r >= 0) {
        region_t *reg = &regions[r];
        reg->free -= need;
        if (reg->free < reg->min_free) {
            reg->min_free = reg->free;
        }
        used += need;
        if (used > peak_used) {
            peak_used = used;
            if (trace && peak_used >= peak_printed + 1024) {
                peak_printed = peak_used;
                fprintf(stderr, "[idf] high-water %lu of %lu\n", (unsigned long)peak_used,
                    (unsigned long)budget);
            }
        }
    }
    return p + SIM_HEADER;
}

void *sim_idf_calloc(size_t n, size_t size) {
    if (size != 0 && n > (size_t)-1 / size) {
        return NULL;
    }
    void *p = sim_idf_malloc(n * size);
    if (p != NULL) {
        memset(p, 0, n * size);
    }
    return p;
}

void sim_idf_free(void *ptr) {
    if (ptr == NULL) {
        return;
    }
    char *p = (char *)ptr - SIM_HEADER;
    block_t *b = (block_t *)p;
    if (b->region >= 0) {
        regions[b->region].free += b->cost;
        used -= b->cost;
    }
    free(p);
}

// The GC's new areas (MICROPY_GC_SPLIT_HEAP_AUTO): at most the largest free block, as
// ports/esp32/gccollect.c answers with heap_caps_get_largest_free_block(MALLOC_CAP_DEFAULT).
// Without a model the heap keeps its -X heapsize.
size_t gc_get_max_new_split(void) {
    size_t largest = 0;
    for (int i = 0; i < n_regions; i++) {
        if (regions[i].free > largest) {
            largest = regions[i].free;
        }
    }
    return largest > BLOCK_HEADER ? (largest - BLOCK_HEADER) & ~(size_t)3 : 0;
}

void *sim_gc_area_alloc(size_t size) {
    void *p = sim_idf_malloc(size);
    if (p != NULL) {
        grown += size;
        if (grown > peak_grown) {
            peak_grown = grown;
        }
    }
    if (trace) {
        fprintf(stderr, "[gc] %s area of %lu, IDF heap used %lu of %lu\n",
            p != NULL ? "new" : "no room for an", (unsigned long)size, (unsigned long)used,
            (unsigned long)budget);
    }
    return p;
}

void sim_gc_area_free(void *ptr) {
    // The area's size is what MicroPython asked for: the model's record of the block has it.
    block_t *b = (block_t *)((char *)ptr - SIM_HEADER);
    size_t size = b->size;
    grown -= size;
    sim_idf_free(ptr);
    if (trace) {
        fprintf(stderr, "[gc] area of %lu given back, IDF heap used %lu of %lu\n",
            (unsigned long)size, (unsigned long)used, (unsigned long)budget);
    }
}

// The GC heap's live size: its blocks in use (allocation table entries not free), the figure
// gc_info() reports as used, counted from the allocation tables alone: gc_info() walks every
// block for its other figures too (~25 us on a grown heap here, a tenth of a GC pass, which a
// board's collection does not spend; bench.guest times the passes inside the loop's stretches).
static size_t gc_used(void) {
    size_t n = 0;
    for (mp_state_mem_area_t *area = &MP_STATE_MEM(area); area != NULL; area = area->next) {
        const byte *atb = area->gc_alloc_table_start;
        for (size_t i = 0; i < area->gc_alloc_table_byte_len; i++) {
            byte a = atb[i];
            n += ((a & 0x03) != 0) + ((a & 0x0c) != 0) + ((a & 0x30) != 0) + ((a & 0xc0) != 0);
        }
    }
    return n * MICROPY_BYTES_PER_GC_BLOCK;
}

// gc_collect (ports/unix/gccollect.c) wrapped at link time (-Wl,--wrap=gc_collect): after every
// collection, automatic or gc.collect(), note the live size.
void __real_gc_collect(void);
void __wrap_gc_collect(void) {
    __real_gc_collect();
    size_t used = gc_used();
    if (used > gc_max_live) {
        gc_max_live = used;
        if (trace) {
            fprintf(stderr, "[gc] live high-water %lu\n", (unsigned long)used);
        }
    }
}

// _board.idf_heap_info(): [(total, free, largest_free_block, minimum_free), ...] per region,
// what esp32.idf_heap_info(esp32.HEAP_DATA) returns on a board.
mp_obj_t sim_board_idf_heap_info(void) {
    mp_obj_t list = mp_obj_new_list(0, NULL);
    for (int i = 0; i < n_regions; i++) {
        size_t largest = regions[i].free > BLOCK_HEADER ? regions[i].free - BLOCK_HEADER : 0;
        mp_obj_t t[4] = {
            mp_obj_new_int_from_uint(regions[i].total),
            mp_obj_new_int_from_uint(regions[i].free),
            mp_obj_new_int_from_uint(largest & ~(size_t)3),
            mp_obj_new_int_from_uint(regions[i].min_free),
        };
        mp_obj_list_append(list, mp_obj_new_tuple(4, t));
    }
    return list;
}
static MP_DEFINE_CONST_FUN_OBJ_0(board_idf_heap_info_obj, sim_board_idf_heap_info);

// A hard reset (machine.reset, hw.c), at once and without allocating (it works with a full
// heap on a board): write the high-water report, then _exit.
void sim_board_reset(int status) {
    fflush(stdout);
    report();
    _exit(status);
}

static const mp_rom_map_elem_t board_module_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR__board) },
    { MP_ROM_QSTR(MP_QSTR_idf_heap_info), MP_ROM_PTR(&board_idf_heap_info_obj) },
};
static MP_DEFINE_CONST_DICT(board_module_globals, board_module_globals_table);

const mp_obj_module_t board_user_cmodule = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&board_module_globals,
};

MP_REGISTER_MODULE(MP_QSTR__board, board_user_cmodule);
