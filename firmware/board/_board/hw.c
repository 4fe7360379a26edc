// The simulated board's hardware modules, in C as on a board: `esp32` (the OTA partitions, the
// bootloader, idf_heap_info), `network` (a station that is always connected) and what the
// agent uses of `machine` (reset, WDT, reset_cause, unique_id, freq; added to the Unix port's
// own `machine` through MICROPY_PY_MACHINE_EXTRA_GLOBALS, board_port.h). Importing them puts
// nothing in the GC heap, as importing a board's C modules does; what a board's firmware does
// create in the GC heap (an esp32.Partition or machine.WDT instance, a list or tuple returned)
// is a GC object here too. Only esp32.NVS stays in Python (sim/esp32nvs.py, loaded on first use).
//
// The board's folder is the process's current directory; its flash is in flash/:
//   flash/ota_0.bin, flash/ota_1.bin   the two app slots (erased bytes are 0xFF)
//   flash/otadata.json                 {"boot": label, "running": label, "state": {label: ...}}
// Image states are ESP-IDF's: EMPTY (no image written since erase), NEW (set_boot done, not yet
// booted), PENDING_VERIFY (booted once, not confirmed), VALID, ABORTED (not confirmed before the
// next reset: the bootloader rolled back), INVALID.
//
// What must behave like the hardware, because the device's OTA code runs unchanged on both:
// - writeblocks(block, buf) erases the 4096-byte blocks it covers, then writes, and refuses a
//   buf that is not whole blocks (ESP-IDF's erase does); with an offset it does not erase, and
//   NOR flash can only clear bits, so the result is old & new;
// - set_boot() validates the image as ESP-IDF does (header, segments within the slot, checksum,
//   appended SHA-256, app descriptor) and raises OSError(-5379), ESP_ERR_OTA_VALIDATE_FAILED;
// - the bootloader (esp32._power_on, run by sim/boardrun.py before boot.py) boots a NEW image
//   once as PENDING_VERIFY, and rolls back to the other slot if it is still PENDING_VERIFY at
//   the next power-on; an image that does not validate is never booted.
// One file descriptor per slot for the life of the process, and a slot's first write noted
// once: a block write allocates nothing, like esp_partition_write (the device's download loop is
// checked under micropython.heap_lock() with the flash in it). Writes are write() system calls,
// so a kill -9 loses nothing that a write returned for. otadata is read and written with the
// firmware's own json module (its objects are transient GC objects, never held).
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mbedtls/sha256.h"
#include "py/mperrno.h"
#include "py/mphal.h"
#include "py/objstr.h"
#include "py/parsenum.h"
#include "py/runtime.h"
#include "py/smallint.h"

#define BLOCK (4096)
#define APP_BASE (0x10000)
#define VALIDATE_FAILED (-5379)  // ESP_ERR_OTA_VALIDATE_FAILED (0x1503)
#define DESC_MAGIC (0xABCD5432u)
#define SCRATCH (512)
#define RESET_STATUS (3)
#define FEED_GAP_MS (250)
#define OTADATA "flash/otadata.json"

void sim_board_reset(int status);  // board.c: the memory report, then _exit
mp_obj_t sim_board_idf_heap_info(void);

static const qstr labels[2] = { MP_QSTR_ota_0, MP_QSTR_ota_1 };
static int running = -1;  // the slot the bootloader started in this process
static int fds[2] = { -1, -1 };
static bool touched[2];
static uint8_t scratch[SCRATCH];  // C memory, as ESP-IDF's: never the application's heap

static void raise_errno(void) {
    mp_raise_OSError(errno);
}

static void raise_msg(mp_int_t code, const char *msg) {
    mp_obj_t args[2] = { MP_OBJ_NEW_SMALL_INT(code), mp_obj_new_str(msg, strlen(msg)) };
    nlr_raise(mp_obj_new_exception_args(&mp_type_OSError, 2, args));
}

static mp_obj_t str(qstr q) {
    return MP_OBJ_NEW_QSTR(q);
}

// The slot a label names (a str "ota_0"/"ota_1"), or -1.
static int slot_of(mp_obj_t label) {
    for (int i = 0; i < 2; i++) {
        if (mp_obj_is_str(label) && mp_obj_equal(label, str(labels[i]))) {
            return i;
        }
    }
    return -1;
}

// _LABELS.index(label): ValueError for anything else.
static int index_of(mp_obj_t label) {
    int i = slot_of(label);
    if (i < 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("object not in sequence"));
    }
    return i;
}

static void path_of(int slot, char *out, size_t n) {
    snprintf(out, n, "flash/%s.bin", qstr_str(labels[slot]));
}

static mp_int_t size_of(int slot) {
    char path[32];
    path_of(slot, path, sizeof(path));
    struct stat st;
    if (stat(path, &st) != 0) {
        raise_errno();
    }
    return st.st_size;
}

// dict.get(key) (None when missing).
static mp_obj_t dget(mp_obj_t d, mp_obj_t key) {
    mp_map_elem_t *e = mp_map_lookup(mp_obj_dict_get_map(d), key, MP_MAP_LOOKUP);
    return e == NULL ? mp_const_none : e->value;
}

static mp_obj_t subscr(mp_obj_t d, mp_obj_t key) {
    return mp_obj_subscr(d, key, MP_OBJ_SENTINEL);
}

static void store(mp_obj_t d, mp_obj_t key, mp_obj_t value) {
    mp_obj_subscr(d, key, value);
}

static bool eq(mp_obj_t o, qstr q) {
    return mp_obj_equal(o, str(q));
}

static mp_obj_t json_call(qstr fn, mp_obj_t arg) {
    mp_obj_t json = mp_import_name(MP_QSTR_json, mp_const_none, MP_OBJ_NEW_SMALL_INT(0));
    return mp_call_function_1(mp_load_attr(json, fn), arg);
}

// otadata.json is a few dozen bytes: read whole into C memory, the file closed before anything
// is allocated (a MemoryError then leaks no descriptor).
#define OTADATA_MAX (512)
static mp_obj_t load(void) {
    int fd = open(OTADATA, O_RDONLY);
    if (fd < 0) {
        raise_msg(2, "no simulated flash here (make one with jobsctl.image.init_sim_flash)");
    }
    char buf[OTADATA_MAX];
    size_t len = 0;
    ssize_t n;
    while ((n = read(fd, buf + len, sizeof(buf) - len)) > 0 && len + n < sizeof(buf)) {
        len += n;
    }
    int e = errno;
    close(fd);
    if (n != 0) {
        mp_raise_OSError(n < 0 ? e : MP_EIO);  // unreadable, or larger than a record can be
    }
    return json_call(MP_QSTR_loads, mp_obj_new_str(buf, len));
}

// Like ESP-IDF's two otadata sectors: the old record stays valid until the new is complete.
static void save(mp_obj_t d) {
    size_t len;
    const char *s = mp_obj_str_get_data(json_call(MP_QSTR_dumps, d), &len);
    int fd = open(OTADATA ".tmp", O_WRONLY | O_CREAT | O_TRUNC, 0666);
    if (fd < 0) {
        raise_errno();
    }
    ssize_t n = write(fd, s, len);
    int e = errno;
    close(fd);
    if (n != (ssize_t)len) {
        mp_raise_OSError(n < 0 ? e : MP_EIO);
    }
    if (rename(OTADATA ".tmp", OTADATA) != 0) {
        raise_errno();
    }
}

// ------------------------------------------------------------- image validation (ESP-IDF)

static uint32_t u32(const uint8_t *b) {
    return b[0] | b[1] << 8 | b[2] << 16 | (uint32_t)b[3] << 24;
}

static bool check_image(FILE *f, uint64_t size) {
    uint8_t hdr[24], sh[8], tail[16], digest[32], stored[32];
    if (fread(hdr, 1, 24, f) < 24 || hdr[0] != 0xE9 || !(hdr[1] > 0 && hdr[1] <= 16)) {
        return false;
    }
    if (hdr[12] | hdr[13] << 8) {  // chip id: 0 is the ESP32
        return false;
    }
    mbedtls_sha256_context h;
    mbedtls_sha256_init(&h);
    mbedtls_sha256_starts_ret(&h, 0);
    mbedtls_sha256_update_ret(&h, hdr, 24);
    uint64_t pos = 24;
    uint8_t acc = 0;  // XOR of every segment byte
    bool ok = false;
    for (int seg = 0; seg < hdr[1]; seg++) {
        if (fread(sh, 1, 8, f) < 8) {
            goto out;
        }
        mbedtls_sha256_update_ret(&h, sh, 8);
        uint32_t n = u32(sh + 4);
        pos += 8;
        if (pos + n > size) {
            goto out;
        }
        uint32_t left = n;
        bool first = true;
        while (left) {
            size_t k = fread(scratch, 1, left < SCRATCH ? left : SCRATCH, f);
            if (!k) {
                goto out;
            }
            if (seg == 0 && first && (k < 4 || u32(scratch) != DESC_MAGIC)) {
                goto out;
            }
            first = false;
            mbedtls_sha256_update_ret(&h, scratch, k);
            for (size_t i = 0; i < k; i++) {
                acc ^= scratch[i];
            }
            left -= k;
        }
        pos += n;
    }
    size_t pad = 15 - pos % 16;
    if (fread(tail, 1, pad + 1, f) < pad + 1) {
        goto out;
    }
    mbedtls_sha256_update_ret(&h, tail, pad + 1);
    if (tail[pad] != (0xEF ^ acc)) {
        goto out;
    }
    if (hdr[23] == 1) {
        mbedtls_sha256_finish_ret(&h, digest);
        if (fread(stored, 1, 32, f) < 32 || memcmp(stored, digest, 32) != 0) {
            goto out;
        }
    }
    ok = true;
out:
    mbedtls_sha256_free(&h);
    return ok;
}

static bool valid(int slot) {
    uint64_t size = size_of(slot);
    char path[32];
    path_of(slot, path, sizeof(path));
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        raise_errno();
    }
    bool ok = check_image(f, size);
    fclose(f);
    return ok;
}

// ------------------------------------------------------------------------- Partition

typedef struct {
    mp_obj_base_t base;
    int slot;
    mp_int_t size;
} partition_obj_t;

extern const mp_obj_type_t sim_esp32_partition_type;

static mp_obj_t new_partition(int slot) {
    mp_int_t size = size_of(slot);
    partition_obj_t *self = mp_obj_malloc(partition_obj_t, &sim_esp32_partition_type);
    self->slot = slot;
    self->size = size;
    return MP_OBJ_FROM_PTR(self);
}

static mp_obj_t partition_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw,
    const mp_obj_t *all_args) {
    enum { ARG_id, ARG_block_size };
    static const mp_arg_t allowed[] = {
        { MP_QSTR_id, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_rom_obj = MP_ROM_NONE} },
        { MP_QSTR_block_size, MP_ARG_INT, {.u_int = BLOCK} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed)];
    mp_arg_parse_all_kw_array(n_args, n_kw, all_args, MP_ARRAY_SIZE(allowed), allowed, args);
    if (args[ARG_block_size].u_int != BLOCK) {
        mp_raise_ValueError(MP_ERROR_TEXT("block_size must be 4096 here"));
    }
    mp_obj_t id = args[ARG_id].u_obj;
    mp_obj_t label = id;
    if (mp_obj_equal(id, MP_OBJ_NEW_SMALL_INT(1))) {  // RUNNING
        label = running >= 0 ? str(labels[running]) : dget(load(), str(MP_QSTR_running));
    } else if (mp_obj_equal(id, MP_OBJ_NEW_SMALL_INT(0))) {  // BOOT
        label = subscr(load(), str(MP_QSTR_boot));
    }
    int slot = slot_of(label);
    if (slot < 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("partition not found"));
    }
    return new_partition(slot);
}

static mp_obj_t partition_find(size_t n_args, const mp_obj_t *pos, mp_map_t *kw) {
    enum { ARG_type, ARG_subtype, ARG_label };
    static const mp_arg_t allowed[] = {
        { MP_QSTR_type, MP_ARG_INT, {.u_int = 0} },
        { MP_QSTR_subtype, MP_ARG_INT, {.u_int = -1} },
        { MP_QSTR_label, MP_ARG_OBJ, {.u_rom_obj = MP_ROM_NONE} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed)];
    mp_arg_parse_all(n_args, pos, kw, MP_ARRAY_SIZE(allowed), allowed, args);
    mp_obj_t out = mp_obj_new_list(0, NULL);
    if (args[ARG_type].u_int != 0) {
        return out;
    }
    mp_obj_t label = args[ARG_label].u_obj;
    mp_int_t subtype = args[ARG_subtype].u_int;
    for (int i = 0; i < 2; i++) {
        if ((label == mp_const_none || mp_obj_equal(label, str(labels[i])))
            && (subtype == -1 || subtype == 0x10 + i)) {
            mp_obj_list_append(out, new_partition(i));
        }
    }
    return out;
}
static MP_DEFINE_CONST_FUN_OBJ_KW(partition_find_fun_obj, 0, partition_find);
static MP_DEFINE_CONST_STATICMETHOD_OBJ(partition_find_obj, MP_ROM_PTR(&partition_find_fun_obj));

static mp_obj_t partition_info(mp_obj_t self_in) {
    partition_obj_t *self = MP_OBJ_TO_PTR(self_in);
    mp_int_t addr = APP_BASE;
    for (int i = 0; i < self->slot; i++) {
        addr += size_of(i);
    }
    mp_obj_t t[6] = {
        MP_OBJ_NEW_SMALL_INT(0), MP_OBJ_NEW_SMALL_INT(0x10 + self->slot),
        mp_obj_new_int(addr), mp_obj_new_int(self->size), str(labels[self->slot]), mp_const_false,
    };
    return mp_obj_new_tuple(6, t);
}
static MP_DEFINE_CONST_FUN_OBJ_1(partition_info_obj, partition_info);

static void partition_print(const mp_print_t *print, mp_obj_t self_in, mp_print_kind_t kind) {
    partition_obj_t *self = MP_OBJ_TO_PTR(self_in);
    mp_int_t addr = APP_BASE;
    for (int i = 0; i < self->slot; i++) {
        addr += size_of(i);
    }
    mp_printf(print, "<Partition type=0, subtype=%d, address=%d, size=%d, label=%s, encrypted=0>",
        0x10 + self->slot, (int)addr, (int)self->size, qstr_str(labels[self->slot]));
}

static mp_obj_t partition_get_next_update(mp_obj_t self_in) {
    partition_obj_t *self = MP_OBJ_TO_PTR(self_in);
    return new_partition(1 - self->slot);
}
static MP_DEFINE_CONST_FUN_OBJ_1(partition_get_next_update_obj, partition_get_next_update);

static void check_range(partition_obj_t *self, mp_int_t start, mp_int_t n) {
    if (start < 0 || start + n > self->size) {
        mp_raise_OSError(MP_EINVAL);  // like esp_partition_* beyond the partition
    }
}

static int file_of(partition_obj_t *self) {
    int *fd = &fds[self->slot];
    if (*fd < 0) {
        char path[32];
        path_of(self->slot, path, sizeof(path));
        *fd = open(path, O_RDWR);
        if (*fd < 0) {
            raise_errno();
        }
    }
    return *fd;
}

static void pwrite_all(int fd, const void *buf, size_t n, off_t at) {
    while (n) {
        ssize_t k = pwrite(fd, buf, n, at);
        if (k < 0) {
            raise_errno();
        }
        buf = (const uint8_t *)buf + k;
        n -= k;
        at += k;
    }
}

// n bytes of 0xFF (erased NOR flash) at `at`.
static void fill_ff(int fd, size_t n, off_t at) {
    static uint8_t ff[SCRATCH];
    if (ff[0] != 0xFF) {
        memset(ff, 0xFF, SCRATCH);
    }
    while (n) {
        size_t k = n < SCRATCH ? n : SCRATCH;
        pwrite_all(fd, ff, k, at);
        n -= k;
        at += k;
    }
}

// Writing into a slot makes whatever image it held unbootable until set_boot again.
static void partition_touched(partition_obj_t *self) {
    if (touched[self->slot]) {
        return;
    }
    mp_obj_t d = load();
    mp_obj_t label = str(labels[self->slot]);
    mp_obj_t st = subscr(d, str(MP_QSTR_state));
    mp_obj_t cur = dget(st, label);
    mp_obj_t run = dget(d, str(MP_QSTR_running));
    if (cur != mp_const_none && !eq(cur, MP_QSTR_EMPTY) && !mp_obj_equal(label, run)) {
        store(st, label, str(MP_QSTR_EMPTY));
        if (mp_obj_equal(subscr(d, str(MP_QSTR_boot)), label)) {
            if (mp_obj_is_true(run)) {
                store(d, str(MP_QSTR_boot), run);
            }
        }
        save(d);
    }
    touched[self->slot] = true;  // only once otadata says so: a failed update is tried again
}

static mp_obj_t partition_readblocks(size_t n_args, const mp_obj_t *args) {
    partition_obj_t *self = MP_OBJ_TO_PTR(args[0]);
    mp_buffer_info_t buf;
    mp_get_buffer_raise(args[2], &buf, MP_BUFFER_WRITE);
    mp_int_t start = mp_obj_get_int(args[1]) * BLOCK + (n_args > 3 ? mp_obj_get_int(args[3]) : 0);
    check_range(self, start, buf.len);
    int fd = file_of(self);
    size_t got = 0;
    while (got < buf.len) {
        ssize_t k = pread(fd, (uint8_t *)buf.buf + got, buf.len - got, start + got);
        if (k < 0) {
            raise_errno();
        }
        if (k == 0) {
            break;
        }
        got += k;
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(partition_readblocks_obj, 3, 4, partition_readblocks);

static mp_obj_t partition_writeblocks(size_t n_args, const mp_obj_t *args) {
    partition_obj_t *self = MP_OBJ_TO_PTR(args[0]);
    mp_buffer_info_t buf;
    mp_get_buffer_raise(args[2], &buf, MP_BUFFER_READ);
    mp_int_t block = mp_obj_get_int(args[1]);
    mp_int_t n = buf.len;
    if (n_args == 3) {
        // Erase the blocks, then program, as the firmware does (esp32_partition.c): its
        // esp_partition_erase_range refuses a length that is not whole blocks.
        if (n % BLOCK) {
            raise_msg(-260, "ESP_ERR_INVALID_SIZE");
        }
        mp_int_t start = block * BLOCK;
        check_range(self, start, n);
        pwrite_all(file_of(self), buf.buf, n, start);
    } else {
        // No erase: NOR flash only clears bits, the result is old & new.
        mp_int_t start = block * BLOCK + mp_obj_get_int(args[3]);
        check_range(self, start, n);
        int fd = file_of(self);
        for (mp_int_t done = 0; done < n;) {
            mp_int_t k = n - done < SCRATCH ? n - done : SCRATCH;
            ssize_t got = pread(fd, scratch, k, start + done);
            if (got < 0) {
                raise_errno();
            }
            memset(scratch + got, 0, k - got);
            for (mp_int_t i = 0; i < k; i++) {
                scratch[i] &= ((const uint8_t *)buf.buf)[done + i];
            }
            pwrite_all(fd, scratch, k, start + done);
            done += k;
        }
    }
    partition_touched(self);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(partition_writeblocks_obj, 3, 4, partition_writeblocks);

static mp_obj_t partition_ioctl(size_t n_args, const mp_obj_t *args) {
    partition_obj_t *self = MP_OBJ_TO_PTR(args[0]);
    mp_int_t op = mp_obj_get_int(args[1]);
    switch (op) {
        case 1:
        case 2:
        case 3:  // init, deinit, sync
            return MP_OBJ_NEW_SMALL_INT(0);
        case 4:  // block count
            return MP_OBJ_NEW_SMALL_INT(self->size / BLOCK);
        case 5:  // block size
            return MP_OBJ_NEW_SMALL_INT(BLOCK);
        case 6: {  // erase one block
            mp_int_t block = n_args > 2 ? mp_obj_get_int(args[2]) : 0;
            check_range(self, block * BLOCK, BLOCK);
            fill_ff(file_of(self), BLOCK, block * BLOCK);
            touched[self->slot] = false;  // an erase always updates otadata
            partition_touched(self);
            return MP_OBJ_NEW_SMALL_INT(0);
        }
        default:
            return mp_const_none;
    }
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(partition_ioctl_obj, 2, 3, partition_ioctl);

static mp_obj_t partition_set_boot(mp_obj_t self_in) {
    partition_obj_t *self = MP_OBJ_TO_PTR(self_in);
    touched[self->slot] = false;  // a write after this must mark it EMPTY again
    if (!valid(self->slot)) {
        raise_msg(VALIDATE_FAILED, "ESP_ERR_OTA_VALIDATE_FAILED");
    }
    mp_obj_t d = load();
    mp_obj_t label = str(labels[self->slot]);
    store(d, str(MP_QSTR_boot), label);
    if (!mp_obj_equal(label, dget(d, str(MP_QSTR_running)))) {
        store(subscr(d, str(MP_QSTR_state)), label, str(MP_QSTR_NEW));
    }
    save(d);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(partition_set_boot_obj, partition_set_boot);

static mp_obj_t partition_mark_app_valid_cancel_rollback(void) {
    mp_obj_t d = load();
    store(subscr(d, str(MP_QSTR_state)), subscr(d, str(MP_QSTR_running)), str(MP_QSTR_VALID));
    save(d);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_0(partition_mark_valid_fun_obj,
    partition_mark_app_valid_cancel_rollback);
static MP_DEFINE_CONST_STATICMETHOD_OBJ(partition_mark_valid_obj,
    MP_ROM_PTR(&partition_mark_valid_fun_obj));

static const mp_rom_map_elem_t partition_locals_table[] = {
    { MP_ROM_QSTR(MP_QSTR_BOOT), MP_ROM_INT(0) },
    { MP_ROM_QSTR(MP_QSTR_RUNNING), MP_ROM_INT(1) },
    { MP_ROM_QSTR(MP_QSTR_TYPE_APP), MP_ROM_INT(0) },
    { MP_ROM_QSTR(MP_QSTR_TYPE_DATA), MP_ROM_INT(1) },
    { MP_ROM_QSTR(MP_QSTR_find), MP_ROM_PTR(&partition_find_obj) },
    { MP_ROM_QSTR(MP_QSTR_info), MP_ROM_PTR(&partition_info_obj) },
    { MP_ROM_QSTR(MP_QSTR_get_next_update), MP_ROM_PTR(&partition_get_next_update_obj) },
    { MP_ROM_QSTR(MP_QSTR_readblocks), MP_ROM_PTR(&partition_readblocks_obj) },
    { MP_ROM_QSTR(MP_QSTR_writeblocks), MP_ROM_PTR(&partition_writeblocks_obj) },
    { MP_ROM_QSTR(MP_QSTR_ioctl), MP_ROM_PTR(&partition_ioctl_obj) },
    { MP_ROM_QSTR(MP_QSTR_set_boot), MP_ROM_PTR(&partition_set_boot_obj) },
    { MP_ROM_QSTR(MP_QSTR_mark_app_valid_cancel_rollback), MP_ROM_PTR(&partition_mark_valid_obj) },
};
static MP_DEFINE_CONST_DICT(partition_locals, partition_locals_table);

MP_DEFINE_CONST_OBJ_TYPE(
    sim_esp32_partition_type,
    MP_QSTR_Partition,
    MP_TYPE_FLAG_NONE,
    make_new, partition_make_new,
    print, partition_print,
    locals_dict, &partition_locals
    );

// --------------------------------------------------------------------------- the bootloader

static bool state_in(mp_obj_t s, const qstr *names, int n) {
    for (int i = 0; i < n; i++) {
        if (s != mp_const_none && eq(s, names[i])) {
            return true;
        }
    }
    return false;
}

// What the second-stage bootloader does with CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE.
static mp_obj_t esp32_power_on(void) {
    static const qstr unbootable[] = { MP_QSTR_ABORTED, MP_QSTR_INVALID, MP_QSTR_EMPTY };
    static const qstr fallback[] = { MP_QSTR_VALID, MP_QSTR_PENDING_VERIFY };
    mp_obj_t d = load();
    int boot = index_of(subscr(d, str(MP_QSTR_boot)));
    int other = 1 - boot;
    mp_obj_t st = subscr(d, str(MP_QSTR_state));
    mp_obj_t s = dget(st, str(labels[boot]));
    if (s != mp_const_none && eq(s, MP_QSTR_PENDING_VERIFY)) {
        // Booted once and never confirmed: give up on it, go back to the last valid image.
        store(st, str(labels[boot]), str(MP_QSTR_ABORTED));
        other = boot;
        boot = 1 - boot;
    } else if (s != mp_const_none && eq(s, MP_QSTR_NEW)) {
        store(st, str(labels[boot]), str(MP_QSTR_PENDING_VERIFY));
    }
    if (state_in(dget(st, str(labels[boot])), unbootable, 3) || !valid(boot)) {
        if (state_in(dget(st, str(labels[other])), fallback, 2) && valid(other)) {
            boot = other;
        } else {
            mp_raise_msg(&mp_type_RuntimeError, MP_ERROR_TEXT("no bootable image in flash"));
        }
    }
    store(d, str(MP_QSTR_boot), str(labels[boot]));
    store(d, str(MP_QSTR_running), str(labels[boot]));
    save(d);
    running = boot;
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_0(esp32_power_on_obj, esp32_power_on);

// esp32.idf_heap_info(capabilities): the modelled ESP-IDF heap (board.c) answers for HEAP_DATA
// as the firmware does; no executable heap is modelled.
#define HEAP_DATA (4)  // MALLOC_CAP_8BIT
#define HEAP_EXEC (1)  // MALLOC_CAP_EXEC
static mp_obj_t esp32_idf_heap_info(mp_obj_t caps) {
    if (mp_obj_get_int(caps) & HEAP_DATA) {
        return sim_board_idf_heap_info();
    }
    return mp_obj_new_list(0, NULL);
}
static MP_DEFINE_CONST_FUN_OBJ_1(esp32_idf_heap_info_obj, esp32_idf_heap_info);

// esp32.NVS(namespace): the stand-in is Python (sim/esp32nvs.py), imported on first use, so a
// board that never touches NVS does not pay for it (the firmware's is C, outside the heap).
static mp_obj_t esp32_nvs(mp_obj_t namespace) {
    mp_obj_t mod = mp_import_name(MP_QSTR_esp32nvs, mp_const_none, MP_OBJ_NEW_SMALL_INT(0));
    return mp_call_function_1(mp_load_attr(mod, MP_QSTR_NVS), namespace);
}
static MP_DEFINE_CONST_FUN_OBJ_1(esp32_nvs_obj, esp32_nvs);

static const mp_rom_map_elem_t esp32_module_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR_esp32) },
    { MP_ROM_QSTR(MP_QSTR_HEAP_DATA), MP_ROM_INT(HEAP_DATA) },
    { MP_ROM_QSTR(MP_QSTR_HEAP_EXEC), MP_ROM_INT(HEAP_EXEC) },
    { MP_ROM_QSTR(MP_QSTR_idf_heap_info), MP_ROM_PTR(&esp32_idf_heap_info_obj) },
    { MP_ROM_QSTR(MP_QSTR_Partition), MP_ROM_PTR(&sim_esp32_partition_type) },
    { MP_ROM_QSTR(MP_QSTR_NVS), MP_ROM_PTR(&esp32_nvs_obj) },
    { MP_ROM_QSTR(MP_QSTR__power_on), MP_ROM_PTR(&esp32_power_on_obj) },
};
static MP_DEFINE_CONST_DICT(esp32_module_globals, esp32_module_globals_table);

const mp_obj_module_t sim_esp32_module = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&esp32_module_globals,
};
MP_REGISTER_MODULE(MP_QSTR_esp32, sim_esp32_module);

// --------------------------------------------------------------------------------- machine

// reset() ends the process at once with exit status 3, like a hard reset ends everything on a
// board: no finally blocks, no flushing of files left open, and no allocation (it works with a
// full heap, as firmware does). The host runner (jobsctl device run) starts the process again,
// which then boots through sim/boardrun.py like a board through its bootloader.
static mp_obj_t machine_reset(void) {
    mp_hal_stdout_tx_str("machine.reset()\n");
    sim_board_reset(RESET_STATUS);
    return mp_const_none;
}
MP_DEFINE_CONST_FUN_OBJ_0(sim_machine_reset_obj, machine_reset);

static mp_obj_t machine_reset_cause(void) {
    const char *s = getenv("SIM_RESET_CAUSE");
    if (s == NULL || !*s) {
        return MP_OBJ_NEW_SMALL_INT(1);  // PWRON_RESET
    }
    return mp_parse_num_integer(s, strlen(s), 10, NULL);
}
MP_DEFINE_CONST_FUN_OBJ_0(sim_machine_reset_cause_obj, machine_reset_cause);

static mp_obj_t machine_unique_id(void) {
    const char *s = getenv("SIM_THING");
    if (s == NULL || !*s) {
        s = "sim";
    }
    return mp_obj_new_bytes((const byte *)s, strlen(s));
}
MP_DEFINE_CONST_FUN_OBJ_0(sim_machine_unique_id_obj, machine_unique_id);

static mp_obj_t machine_freq(size_t n_args, const mp_obj_t *args) {
    return mp_obj_new_int(240000000);
}
MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(sim_machine_freq_obj, 0, 1, machine_freq);

// WDT writes the time of each feed to the file `wdt.fed` in the board folder (and its timeout
// to `wdt` when made); the runner kills and restarts a board whose watchdog was not fed in time,
// as the hardware would.
typedef struct {
    mp_obj_base_t base;
    mp_int_t timeout;
    mp_uint_t last;
    bool fed;
} wdt_obj_t;

static void write_int(const char *path, mp_int_t n) {
    char line[24];
    int len = snprintf(line, sizeof(line), "%d\n", (int)n);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0666);
    if (fd < 0) {
        raise_errno();
    }
    ssize_t k = write(fd, line, len);
    int e = errno;
    close(fd);
    if (k != len) {
        mp_raise_OSError(k < 0 ? e : MP_EIO);
    }
}

static mp_obj_t wdt_feed(mp_obj_t self_in) {
    wdt_obj_t *self = MP_OBJ_TO_PTR(self_in);
    mp_uint_t now = mp_hal_ticks_ms();  // unsigned: the difference is right across a wrap
    if (self->fed && now - self->last < FEED_GAP_MS) {
        return mp_const_none;
    }
    self->last = now;
    self->fed = true;
    write_int("wdt.fed", self->timeout);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(wdt_feed_obj, wdt_feed);

static mp_obj_t wdt_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw,
    const mp_obj_t *all_args) {
    enum { ARG_id, ARG_timeout };
    static const mp_arg_t allowed[] = {
        { MP_QSTR_id, MP_ARG_INT, {.u_int = 0} },
        { MP_QSTR_timeout, MP_ARG_INT, {.u_int = 5000} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed)];
    mp_arg_parse_all_kw_array(n_args, n_kw, all_args, MP_ARRAY_SIZE(allowed), allowed, args);
    wdt_obj_t *self = mp_obj_malloc(wdt_obj_t, type);
    self->timeout = args[ARG_timeout].u_int;
    self->fed = false;
    write_int("wdt", self->timeout);
    wdt_feed(MP_OBJ_FROM_PTR(self));
    return MP_OBJ_FROM_PTR(self);
}

static const mp_rom_map_elem_t wdt_locals_table[] = {
    { MP_ROM_QSTR(MP_QSTR_feed), MP_ROM_PTR(&wdt_feed_obj) },
};
static MP_DEFINE_CONST_DICT(wdt_locals, wdt_locals_table);

MP_DEFINE_CONST_OBJ_TYPE(
    sim_machine_wdt_type,
    MP_QSTR_WDT,
    MP_TYPE_FLAG_NONE,
    make_new, wdt_make_new,
    locals_dict, &wdt_locals
    );

// The names MICROPY_PY_MACHINE_EXTRA_GLOBALS (board_port.h) adds to the port's machine module,
// here too so that they are in the qstr pool whatever the build scans.
static const qstr machine_names[] __attribute__((unused)) = {
    MP_QSTR_reset, MP_QSTR_reset_cause, MP_QSTR_unique_id, MP_QSTR_freq, MP_QSTR_WDT,
    MP_QSTR_PWRON_RESET, MP_QSTR_HARD_RESET, MP_QSTR_WDT_RESET, MP_QSTR_DEEPSLEEP_RESET,
    MP_QSTR_SOFT_RESET,
};

// Names the frozen Python stand-ins these modules replace had in the port's static qstr pool
// (identifiers of their code), kept there: the device library uses them too, and on a board they
// are static as well (the firmware's frozen modules and its network.WLAN's `ssid`). Without
// them the library would intern them at run time, 7 names' worth of dynamic qstr pool that
// neither a board nor the model before spent (docs/memory.md section 5: the pools grow by
// doubling, so a few names can move the next pool's allocation onto a job's peak).
static const qstr static_names[] __attribute__((unused)) = {
    MP_QSTR_b, MP_QSTR_d, MP_QSTR_i, MP_QSTR_x, MP_QSTR_op, MP_QSTR_flag, MP_QSTR_ssid,
};

// --------------------------------------------------------------------------------- network

// The PC is always on the network, so a station connects at once: enough of WLAN for the
// agent's connect_network().
#define STAT_IDLE (0)
#define STAT_GOT_IP (1010)

typedef struct {
    mp_obj_base_t base;
    bool active;
    mp_obj_t ssid;
} wlan_obj_t;

static mp_obj_t wlan_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw,
    const mp_obj_t *args) {
    mp_arg_check_num(n_args, n_kw, 0, 1, false);
    wlan_obj_t *self = mp_obj_malloc(wlan_obj_t, type);
    self->active = false;
    self->ssid = mp_const_none;
    return MP_OBJ_FROM_PTR(self);
}

static mp_obj_t wlan_active(size_t n_args, const mp_obj_t *args) {
    wlan_obj_t *self = MP_OBJ_TO_PTR(args[0]);
    if (n_args > 1 && args[1] != mp_const_none) {
        self->active = mp_obj_is_true(args[1]);
    }
    return mp_obj_new_bool(self->active);
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(wlan_active_obj, 1, 2, wlan_active);

static mp_obj_t wlan_connect(size_t n_args, const mp_obj_t *args) {
    wlan_obj_t *self = MP_OBJ_TO_PTR(args[0]);
    if (!self->active) {
        mp_raise_msg(&mp_type_OSError, MP_ERROR_TEXT("wifi: interface not active"));
    }
    self->ssid = n_args > 1 ? args[1] : mp_const_none;
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(wlan_connect_obj, 1, 3, wlan_connect);

static mp_obj_t wlan_disconnect(mp_obj_t self_in) {
    wlan_obj_t *self = MP_OBJ_TO_PTR(self_in);
    self->ssid = mp_const_none;
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(wlan_disconnect_obj, wlan_disconnect);

static mp_obj_t wlan_isconnected(mp_obj_t self_in) {
    wlan_obj_t *self = MP_OBJ_TO_PTR(self_in);
    return mp_obj_new_bool(self->active);
}
static MP_DEFINE_CONST_FUN_OBJ_1(wlan_isconnected_obj, wlan_isconnected);

static mp_obj_t wlan_status(size_t n_args, const mp_obj_t *args) {
    wlan_obj_t *self = MP_OBJ_TO_PTR(args[0]);
    return MP_OBJ_NEW_SMALL_INT(self->active ? STAT_GOT_IP : STAT_IDLE);
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(wlan_status_obj, 1, 2, wlan_status);

static mp_obj_t wlan_ifconfig(size_t n_args, const mp_obj_t *args) {
    mp_obj_t t[4] = {
        mp_obj_new_str("127.0.0.1", 9), mp_obj_new_str("255.0.0.0", 9),
        mp_obj_new_str("127.0.0.1", 9), mp_obj_new_str("127.0.0.1", 9),
    };
    return mp_obj_new_tuple(4, t);
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(wlan_ifconfig_obj, 1, 2, wlan_ifconfig);

static const mp_rom_map_elem_t wlan_locals_table[] = {
    { MP_ROM_QSTR(MP_QSTR_active), MP_ROM_PTR(&wlan_active_obj) },
    { MP_ROM_QSTR(MP_QSTR_connect), MP_ROM_PTR(&wlan_connect_obj) },
    { MP_ROM_QSTR(MP_QSTR_disconnect), MP_ROM_PTR(&wlan_disconnect_obj) },
    { MP_ROM_QSTR(MP_QSTR_isconnected), MP_ROM_PTR(&wlan_isconnected_obj) },
    { MP_ROM_QSTR(MP_QSTR_status), MP_ROM_PTR(&wlan_status_obj) },
    { MP_ROM_QSTR(MP_QSTR_ifconfig), MP_ROM_PTR(&wlan_ifconfig_obj) },
};
static MP_DEFINE_CONST_DICT(wlan_locals, wlan_locals_table);

MP_DEFINE_CONST_OBJ_TYPE(
    sim_network_wlan_type,
    MP_QSTR_WLAN,
    MP_TYPE_FLAG_NONE,
    make_new, wlan_make_new,
    locals_dict, &wlan_locals
    );

static const mp_rom_map_elem_t network_module_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR_network) },
    { MP_ROM_QSTR(MP_QSTR_STA_IF), MP_ROM_INT(0) },
    { MP_ROM_QSTR(MP_QSTR_AP_IF), MP_ROM_INT(1) },
    { MP_ROM_QSTR(MP_QSTR_STAT_IDLE), MP_ROM_INT(STAT_IDLE) },
    { MP_ROM_QSTR(MP_QSTR_STAT_CONNECTING), MP_ROM_INT(1) },
    { MP_ROM_QSTR(MP_QSTR_STAT_GOT_IP), MP_ROM_INT(STAT_GOT_IP) },
    { MP_ROM_QSTR(MP_QSTR_WLAN), MP_ROM_PTR(&sim_network_wlan_type) },
};
static MP_DEFINE_CONST_DICT(network_module_globals, network_module_globals_table);

const mp_obj_module_t sim_network_module = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&network_module_globals,
};
MP_REGISTER_MODULE(MP_QSTR_network, sim_network_module);
