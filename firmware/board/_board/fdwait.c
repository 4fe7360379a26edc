// The module `_fdwait`: Transport.wait (lib/iotjobs/transport.py) on the Unix port, in C so that
// it costs the GC heap what a board's wait costs there (nothing to import, nothing per wait). A
// board has no such module: it waits through asyncio's poller on transport._Wake.
//
// Why the Unix port waits otherwise: its poller (select.poll with
// MICROPY_PY_SELECT_POSIX_OPTIMISATIONS) sleeps 1 ms on every pass while a stream without a file
// descriptor (_Wake, a TLS socket) is in it, even a pass with another task ready. A file
// descriptor costs nothing there: poll() sleeps in the kernel until it has bytes. So the waiting
// task parks in asyncio's poller on the TCP socket under TLS (Tap finds it: the TLS socket does
// not give its descriptor), and:
// - bytes mbedTLS already holds are not seen by a poll of the descriptor: before it parks, the
//   guard is asked as _Wake.ioctl asks it (ready(0), a non-blocking read of one byte, kept);
// - the deadline: a Parked is also the coroutine of one task per connection (its `send`),
//   queued in asyncio's run queue for the deadline only while a wait is parked (not a second
//   task per wait, as asyncio.wait_for_ms makes); it releases the wait;
// - set() (the application queued a message, or Transport.close) releases it at once.
// It goes through asyncio's own objects as asyncio.core's Python does (core._io_queue, its map
// and poller, core.cur_task, core._task_queue's push/remove, Task.data), so that Task.cancel
// takes a parked task out of the poller (IOQueue.remove) and the poller's wake-up pushes it.
// GC objects, 160 bytes per connection: the Parked (48 bytes), its poller entry [task, None,
// sock] (a list, made once and left registered after a wait that set() or the deadline ended; a
// wait the socket ends has asyncio take it out, the next one puts it in again) and the timer's
// Task. A wait allocates nothing: Transport.wait returns the Parked itself, awaited through its
// iternext (no StopIteration object, no iterator buffer).
#include "py/builtin.h"
#include "py/mphal.h"
#include "py/objlist.h"
#include "py/runtime.h"
#include "py/smallint.h"

#define POLLIN (1)

// time.ticks_diff(a, b): modulo MICROPY_PY_TIME_TICKS_PERIOD.
static mp_int_t ticks_diff(mp_uint_t a, mp_uint_t b) {
    const mp_uint_t period = MICROPY_PY_TIME_TICKS_PERIOD;
    return ((a - b + period / 2) & (period - 1)) - period / 2;
}

static mp_uint_t ticks_now(void) {
    return mp_hal_ticks_ms() & (MICROPY_PY_TIME_TICKS_PERIOD - 1);
}

// obj.name(*args), no bound method made.
static mp_obj_t call(mp_obj_t obj, qstr name, size_t n, const mp_obj_t *args) {
    mp_obj_t dest[4];
    mp_load_method(obj, name, dest);
    for (size_t i = 0; i < n; i++) {
        dest[2 + i] = args[i];
    }
    return mp_call_method_n_kw(n, 0, dest);
}

// -------------------------------------------------------------------------------------- Tap

// umqtt.simple's `socket` module as its connect() sees it: the socket it makes is kept (`sock`);
// every other name is the module's.
typedef struct {
    mp_obj_base_t base;
    mp_obj_t m;
    mp_obj_t sock;
} tap_obj_t;

static mp_obj_t tap_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw,
    const mp_obj_t *args) {
    mp_arg_check_num(n_args, n_kw, 1, 1, false);
    tap_obj_t *self = mp_obj_malloc(tap_obj_t, type);
    self->m = args[0];
    self->sock = mp_const_none;
    return MP_OBJ_FROM_PTR(self);
}

static mp_obj_t tap_socket(size_t n_args, const mp_obj_t *args) {
    tap_obj_t *self = MP_OBJ_TO_PTR(args[0]);
    mp_obj_t fn = mp_load_attr(self->m, MP_QSTR_socket);
    self->sock = mp_call_function_n_kw(fn, n_args - 1, 0, args + 1);
    return self->sock;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(tap_socket_obj, 1, 4, tap_socket);

static void tap_attr(mp_obj_t self_in, qstr attr, mp_obj_t *dest) {
    tap_obj_t *self = MP_OBJ_TO_PTR(self_in);
    if (dest[0] != MP_OBJ_NULL) {
        return;  // read-only
    }
    if (attr == MP_QSTR_socket) {
        dest[0] = MP_OBJ_FROM_PTR(&tap_socket_obj);
        dest[1] = self_in;
    } else if (attr == MP_QSTR_sock) {
        dest[0] = self->sock;
    } else if (attr == MP_QSTR_m) {
        dest[0] = self->m;
    } else {
        mp_load_method_maybe(self->m, attr, dest);
    }
}

static MP_DEFINE_CONST_OBJ_TYPE(
    tap_type,
    MP_QSTR_Tap,
    MP_TYPE_FLAG_NONE,
    make_new, tap_make_new,
    attr, tap_attr
    );

// ----------------------------------------------------------------------------------- Parked

typedef struct {
    mp_obj_base_t base;
    mp_obj_t guard;  // transport._Guard; None once the transport is closed
    mp_obj_t core;  // asyncio.core
    mp_obj_t entry;  // [task parked, None, sock]: its entry in asyncio's IOQueue.map
    mp_obj_t key;  // id(sock), its key there
    mp_obj_t timer;  // the Task whose coroutine this is too (send): the deadline
    mp_obj_t q;  // the run queue the timer is in, MP_OBJ_NULL while it is in none
    mp_uint_t until;  // the deadline (ticks_ms), set by Transport.wait
    bool state;  // set() called
    bool on;  // the wait under way has asked (and parked if it had to)
} parked_obj_t;

static mp_obj_t *entry_items(parked_obj_t *self) {
    size_t n;
    mp_obj_t *items;
    mp_obj_list_get(self->entry, &n, &items);
    return items;
}

static mp_obj_t io_queue(parked_obj_t *self) {
    return mp_load_attr(self->core, MP_QSTR__io_queue);
}

// Whether the entry is the one asyncio's poller has for the socket.
static bool registered(parked_obj_t *self, mp_obj_t io) {
    mp_obj_t map = mp_load_attr(io, MP_QSTR_map);
    mp_map_elem_t *e = mp_map_lookup(mp_obj_dict_get_map(map), self->key, MP_MAP_LOOKUP);
    return e != NULL && e->value == self->entry;
}

// Whether a task is parked here now (not pushed by the poller or cancelled out of it).
static bool parked(parked_obj_t *self) {
    return entry_items(self)[0] != mp_const_none && registered(self, io_queue(self));
}

// The timer out of the run queue it is in.
static void off(parked_obj_t *self) {
    mp_obj_t q = self->q;
    if (q != MP_OBJ_NULL) {
        self->q = MP_OBJ_NULL;
        call(q, MP_QSTR_remove, 1, &self->timer);
    }
}

// The timer into the run queue, for the deadline.
static void arm_timer(parked_obj_t *self) {
    mp_obj_t q = mp_load_attr(self->core, MP_QSTR__task_queue);
    mp_obj_t args[2] = { self->timer, MP_OBJ_NEW_SMALL_INT(self->until) };
    call(q, MP_QSTR_push, 2, args);
    self->q = q;
}

// What _Wake.ioctl answers: whether the waiting task may go on now.
static bool ready(parked_obj_t *self) {
    if (self->state || self->guard == mp_const_none) {  // None: closed (never touch its socket)
        return true;
    }
    nlr_buf_t nlr;
    if (nlr_push(&nlr) == 0) {
        mp_obj_t zero = MP_OBJ_NEW_SMALL_INT(0);
        bool has = mp_obj_is_true(call(self->guard, MP_QSTR_ready, 1, &zero));
        nlr_pop();
        if (has) {
            return true;
        }
    } else {
        return true;  // closed or broken: the reader finds out
    }
    return ticks_diff(self->until, ticks_now()) <= 0;
}

// The current task into asyncio's poller on the socket, as IOQueue._enqueue puts it there.
static void park(parked_obj_t *self) {
    mp_obj_t io = io_queue(self);
    mp_obj_t *e = entry_items(self);
    if (!registered(self, io)) {  // the first wait, or the socket ended the last one
        mp_obj_dict_store(mp_load_attr(io, MP_QSTR_map), self->key, self->entry);
        mp_obj_t args[2] = { e[2], MP_OBJ_NEW_SMALL_INT(POLLIN) };
        call(mp_load_attr(io, MP_QSTR_poller), MP_QSTR_register, 2, args);
    }
    mp_obj_t task = mp_load_attr(self->core, MP_QSTR_cur_task);
    e[0] = task;
    mp_store_attr(task, MP_QSTR_data, io);  // Task.cancel takes it out of there
    off(self);
    arm_timer(self);
}

static void parked_set_(parked_obj_t *self) {
    self->state = true;
    mp_obj_t *e = entry_items(self);
    if (parked(self)) {
        call(mp_load_attr(self->core, MP_QSTR__task_queue), MP_QSTR_push, 1, &e[0]);
        e[0] = mp_const_none;
    }
    if (self->guard == mp_const_none) {
        // Transport.close: the socket leaves asyncio's poller before it is closed (its
        // descriptor may be reused) and the timer leaves the run queue.
        mp_obj_t io = io_queue(self);
        if (registered(self, io)) {
            call(io, MP_QSTR__dequeue, 1, &e[2]);
        }
        off(self);
    }
}

// Parked(guard, sock): sock is the TCP socket under the TLS socket the guard reads.
static mp_obj_t parked_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw,
    const mp_obj_t *args) {
    mp_arg_check_num(n_args, n_kw, 2, 2, false);
    mp_obj_t asyncio = mp_import_name(MP_QSTR_asyncio, mp_const_none, MP_OBJ_NEW_SMALL_INT(0));
    parked_obj_t *self = mp_obj_malloc(parked_obj_t, type);
    self->guard = args[0];
    self->core = mp_load_attr(asyncio, MP_QSTR_core);
    mp_obj_t e[3] = { mp_const_none, mp_const_none, args[1] };
    self->entry = mp_obj_new_list(3, e);
    self->key = mp_call_function_1(MP_OBJ_FROM_PTR(&mp_builtin_id_obj), args[1]);
    self->until = ticks_now();
    self->state = false;
    self->on = false;
    self->q = MP_OBJ_NULL;
    self->timer = mp_const_none;
    // Queued now: it runs once, finds no wait parked and waits in no queue.
    mp_obj_t create_task = mp_load_attr(asyncio, MP_QSTR_create_task);
    self->timer = mp_call_function_1(create_task, MP_OBJ_FROM_PTR(self));
    self->q = mp_load_attr(self->core, MP_QSTR__task_queue);
    return MP_OBJ_FROM_PTR(self);
}

// The wait, awaited: yields once (parked) unless the task may go on at once.
static mp_obj_t parked_iternext(mp_obj_t self_in) {
    parked_obj_t *self = MP_OBJ_TO_PTR(self_in);
    if (!self->on) {
        self->on = true;
        if (!ready(self)) {  // nothing held, not set, deadline not passed
            park(self);
            return mp_const_none;  // a yield: the task waits
        }
    }
    off(self);
    self->state = false;
    self->on = false;
    return mp_make_stop_iteration(mp_const_none);
}

// The timer's step (its Task runs it as a coroutine's send): ends a parked wait at its deadline.
static mp_obj_t parked_send(mp_obj_t self_in, mp_obj_t value) {
    parked_obj_t *self = MP_OBJ_TO_PTR(self_in);
    self->q = MP_OBJ_NULL;
    if (parked(self)) {
        if (ticks_diff(self->until, ticks_now()) > 0) {  // early (the poller first)
            arm_timer(self);
        } else {
            parked_set_(self);
        }
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_2(parked_send_obj, parked_send);

// Ends a parked wait (its task to the run queue) or makes the next one return at once.
static mp_obj_t parked_set(mp_obj_t self_in) {
    parked_set_(MP_OBJ_TO_PTR(self_in));
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(parked_set_obj, parked_set);

// Attributes: until (a store begins a wait: Transport.wait sets it, then awaits), _g (the
// guard: Transport.close stores None), sock, state and _q (the timer's run queue or None).
static void parked_attr(mp_obj_t self_in, qstr attr, mp_obj_t *dest) {
    parked_obj_t *self = MP_OBJ_TO_PTR(self_in);
    if (dest[0] == MP_OBJ_NULL) {
        if (attr == MP_QSTR_until) {
            dest[0] = MP_OBJ_NEW_SMALL_INT(self->until);
        } else if (attr == MP_QSTR__g) {
            dest[0] = self->guard;
        } else if (attr == MP_QSTR_sock) {
            dest[0] = entry_items(self)[2];
        } else if (attr == MP_QSTR_state) {
            dest[0] = MP_OBJ_NEW_SMALL_INT(self->state);
        } else if (attr == MP_QSTR__q) {
            dest[0] = self->q == MP_OBJ_NULL ? mp_const_none : self->q;
        } else {
            dest[1] = MP_OBJ_SENTINEL;  // the methods
        }
    } else if (dest[1] != MP_OBJ_NULL) {
        if (attr == MP_QSTR_until) {
            self->until = mp_obj_get_int(dest[1]) & (MICROPY_PY_TIME_TICKS_PERIOD - 1);
            self->on = false;
            dest[0] = MP_OBJ_NULL;
        } else if (attr == MP_QSTR__g) {
            self->guard = dest[1];
            dest[0] = MP_OBJ_NULL;
        }
    }
}

static const mp_rom_map_elem_t parked_locals_table[] = {
    { MP_ROM_QSTR(MP_QSTR_set), MP_ROM_PTR(&parked_set_obj) },
    { MP_ROM_QSTR(MP_QSTR_send), MP_ROM_PTR(&parked_send_obj) },
};
static MP_DEFINE_CONST_DICT(parked_locals, parked_locals_table);

static MP_DEFINE_CONST_OBJ_TYPE(
    parked_type,
    MP_QSTR_Parked,
    MP_TYPE_FLAG_ITER_IS_ITERNEXT,
    make_new, parked_make_new,
    iter, parked_iternext,
    attr, parked_attr,
    locals_dict, &parked_locals
    );

static const mp_rom_map_elem_t fdwait_module_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR__fdwait) },
    { MP_ROM_QSTR(MP_QSTR_Tap), MP_ROM_PTR(&tap_type) },
    { MP_ROM_QSTR(MP_QSTR_Parked), MP_ROM_PTR(&parked_type) },
};
static MP_DEFINE_CONST_DICT(fdwait_module_globals, fdwait_module_globals_table);

const mp_obj_module_t sim_fdwait_module = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&fdwait_module_globals,
};
MP_REGISTER_MODULE(MP_QSTR__fdwait, sim_fdwait_module);
