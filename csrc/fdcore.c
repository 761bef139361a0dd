/* pydmabuf's optional compiled path, part two: the fd-owning base type in C.
 *
 * pydmabuf.uapi._fdcore.FdBase holds what every fd-owning object keeps (_fd, _cell, weak
 * references) and does in C what every object does on its hot paths: close(),
 * fileno(), closed, the finalizer, and a non-blocking POLLIN check (SyncFile.signaled).
 * It implements exactly the protocol of pydmabuf/_fd.py, whose pure FdHolder is the
 * reference (read its docstring first): setup() hands over that module's shared
 * state (_held, _close_hooks, ...), so holds, close hooks and detach() work the same
 * either way; pydmabuf._fd uses this type as FdHolder's base only where it was built,
 * and the test suite runs both ways. Each step that the pure code makes atomic under
 * the GIL (pop of the one-element cell) is one C step here, with the GIL held.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <unistd.h>

#define DETACHING (-2)
#ifndef SOURCE_HASH  /* tools/build_fastops.py defines it: tests tell a stale build by it */
#define SOURCE_HASH "unknown"
#endif

typedef struct {
    PyObject_HEAD
    PyObject *fd;          /* _fd: an int (the number, -1 closed, -2 detaching) */
    PyObject *cell;        /* _cell: [number] while the number is ours to close */
    PyObject *weakreflist;
} FdBase;

/* pydmabuf._fd's shared state and helpers, from setup(). */
static PyObject *held;             /* list: objects with an operation in flight */
static PyObject *close_hooks;      /* dict: id(holder) -> hooks */
static PyObject *run_close_hooks;  /* function(holder) */
static PyObject *close_detaching;  /* function(holder): close() of an object detach() is deciding */
static PyObject *closed_error;     /* function(kind) -> ClosedError */

/* The number in _fd; -1 for a missing or unexpected value (then: closed). */
static long fd_of(FdBase *self)
{
    long fd;
    if (self->fd == NULL || !PyLong_CheckExact(self->fd))
        return -1;
    fd = PyLong_AsLong(self->fd);
    if (fd == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    return fd;
}

static int set_fd(FdBase *self, long fd)
{
    PyObject *value = PyLong_FromLong(fd);
    if (value == NULL)
        return -1;
    Py_XSETREF(self->fd, value);
    return 0;
}

static PyObject *raise_closed(FdBase *self)
{
    PyObject *kind = PyObject_GetAttrString((PyObject *)Py_TYPE(self), "_kind");
    PyObject *exc;
    if (kind == NULL)
        return NULL;
    exc = PyObject_CallOneArg(closed_error, kind);
    Py_DECREF(kind);
    if (exc == NULL)
        return NULL;
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
    return NULL;
}

/* Pop the number out of the cell and close it: exactly one of the racing closers
 * finds it there. 0 done (or nothing to do); -1 with an exception (close failed). */
static int pop_and_close(FdBase *self)
{
    Py_ssize_t n;
    PyObject *item;
    long fd;
    int r;
    if (self->cell == NULL || !PyList_Check(self->cell))
        return 0;
    n = PyList_GET_SIZE(self->cell);
    if (n == 0)
        return 0;
    item = PyList_GET_ITEM(self->cell, n - 1);
    Py_INCREF(item);
    if (PyList_SetSlice(self->cell, n - 1, n, NULL) < 0) {
        Py_DECREF(item);
        return -1;
    }
    fd = PyLong_AsLong(item);
    Py_DECREF(item);
    if (fd == -1 && PyErr_Occurred())
        return -1;
    Py_BEGIN_ALLOW_THREADS
    r = close((int)fd);  /* not retried on EINTR, as os.close: the number is gone either way */
    Py_END_ALLOW_THREADS
    if (r < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

static int call_close_hooks(FdBase *self)
{
    PyObject *r;
    if (PyDict_GET_SIZE(close_hooks) == 0)
        return 0;
    r = PyObject_CallOneArg(run_close_hooks, (PyObject *)self);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static PyObject *FdBase_close(FdBase *self, PyObject *Py_UNUSED(ignored))
{
    long fd = fd_of(self);
    if (fd >= 0) {
        if (set_fd(self, -1) < 0 || call_close_hooks(self) < 0)
            return NULL;
        if (PyList_GET_SIZE(held) > 0) {
            int inside = PySequence_Contains(held, (PyObject *)self);
            if (inside < 0)
                return NULL;
            if (inside)
                Py_RETURN_NONE;  /* the last release finishes */
        }
        if (pop_and_close(self) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    if (fd == DETACHING)  /* detach() in another thread decides: then close */
        return PyObject_CallOneArg(close_detaching, (PyObject *)self);
    Py_RETURN_NONE;
}

static PyObject *FdBase_fileno(FdBase *self, PyObject *Py_UNUSED(ignored))
{
    if (fd_of(self) < 0)
        return raise_closed(self);
    Py_INCREF(self->fd);
    return self->fd;
}

static PyObject *FdBase_get_closed(FdBase *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(fd_of(self) < 0);
}

/* poll(POLLIN) without waiting and without a hold: poll only reads, so poll first and
 * then check the object is still open (as SyncFile.signaled's pure version). */
static PyObject *FdBase_get_readable(FdBase *self, void *Py_UNUSED(closure))
{
    struct pollfd p;
    int r;
    p.fd = (int)fd_of(self);  /* a closed object's -1 is never ready */
    p.events = POLLIN;
    p.revents = 0;
    do {
        r = poll(&p, 1, 0);
    } while (r < 0 && errno == EINTR);
    if (fd_of(self) < 0)
        return raise_closed(self);
    if (r < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyBool_FromLong(p.revents != 0);
}

/* The finalizer only closes: the pure FdHolder.__del__, step by step. */
static void FdBase_finalize(FdBase *self)
{
    PyObject *type, *value, *tb;
    if (self->cell == NULL)  /* __init__ never ran */
        return;
    PyErr_Fetch(&type, &value, &tb);
    if (!PyList_Check(self->cell) || PyList_GET_SIZE(self->cell) == 0) {
        if (PyDict_GET_SIZE(close_hooks) > 0) {
            PyObject *key = PyLong_FromVoidPtr(self);
            if (key != NULL) {
                if (PyDict_DelItem(close_hooks, key) < 0)
                    PyErr_Clear();
                Py_DECREF(key);
            } else {
                PyErr_Clear();
            }
        }
    } else if (set_fd(self, -1) < 0 || call_close_hooks(self) < 0 || pop_and_close(self) < 0) {
        PyErr_Clear();  /* a finalizer cannot report */
    }
    PyErr_Restore(type, value, tb);
}

static void FdBase_dealloc(FdBase *self)
{
    /* A Python subclass's dealloc has run the finalizer already; the base alone runs it here. */
    if (Py_TYPE(self)->tp_dealloc == (destructor)FdBase_dealloc &&
        PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0)
        return;  /* resurrected */
    if (self->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    Py_CLEAR(self->fd);
    Py_CLEAR(self->cell);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef FdBase_methods[] = {
    {"close", (PyCFunction)FdBase_close, METH_NOARGS,
     "Close the fd; calling it again does nothing. If another thread is inside an\n"
     "operation on this object, the number is released when that operation ends."},
    {"fileno", (PyCFunction)FdBase_fileno, METH_NOARGS,
     "The fd number (for poll/select/asyncio); raises if closed. The number is\n"
     "only valid while this object is open: don't use it across a close()."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef FdBase_getset[] = {
    {"closed", (getter)FdBase_get_closed, NULL, "True once ``close()`` or ``detach()`` has run (never raises).", NULL},
    {"_readable", (getter)FdBase_get_readable, NULL,
     "True once the fence has signaled (never blocks).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef FdBase_members[] = {
    {"_fd", T_OBJECT_EX, offsetof(FdBase, fd), 0, NULL},
    {"_cell", T_OBJECT_EX, offsetof(FdBase, cell), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject FdBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pydmabuf.uapi._fdcore.FdBase",
    .tp_doc = "The fd-owning base in C (see csrc/fdcore.c and pydmabuf._fd).",
    .tp_basicsize = sizeof(FdBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_dealloc = (destructor)FdBase_dealloc,
    .tp_finalize = (destructor)FdBase_finalize,
    .tp_weaklistoffset = offsetof(FdBase, weakreflist),
    .tp_methods = FdBase_methods,
    .tp_getset = FdBase_getset,
    .tp_members = FdBase_members,
    /* tp_new: object's, set at init, so object.__new__(Buffer) (the hot paths'
     * construction, no __init__ frame) stays allowed */
};

/* --- factories: a holder made and filled in one C call -----------------------------
 * factory(cls, names, defaults) returns make(fd, *values): an instance of cls (a
 * subclass of FdBase) with _fd = fd, _cell = [fd] and each slot in names set to its
 * value; defaults are the values of the last len(defaults) names when not given (as a
 * Python function's defaults). It does what object.__new__(cls) followed by
 * attribute stores does in the pure path, with no __init__ and no Python frame. */
#define MAX_SLOTS 8

typedef struct {
    PyObject_HEAD
    PyTypeObject *cls;
    Py_ssize_t n;
    Py_ssize_t offsets[MAX_SLOTS];
    PyObject *defaults[MAX_SLOTS];  /* NULL: required (no default) */
} Factory;

static void Factory_dealloc(Factory *self)
{
    Py_ssize_t i;
    Py_XDECREF(self->cls);
    for (i = 0; i < self->n; i++)
        Py_XDECREF(self->defaults[i]);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject FactoryType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pydmabuf.uapi._fdcore.Factory",
    .tp_basicsize = sizeof(Factory),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)Factory_dealloc,
};

static PyObject *make_holder(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Factory *f = (Factory *)self;
    PyObject *obj, *cell, *value;
    FdBase *holder;
    Py_ssize_t i;
    if (nargs < 1 || nargs > 1 + f->n) {
        PyErr_Format(PyExc_TypeError, "make %s: fd and at most %zd values, got %zd arguments",
                     f->cls->tp_name, f->n, nargs);
        return NULL;
    }
    if (!PyLong_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "make: the fd must be an int");
        return NULL;
    }
    for (i = nargs - 1; i < f->n; i++) {
        if (f->defaults[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "make %s: value %zd is required", f->cls->tp_name, i + 1);
            return NULL;
        }
    }
    cell = PyList_New(1);
    if (cell == NULL)
        return NULL;
    Py_INCREF(args[0]);
    PyList_SET_ITEM(cell, 0, args[0]);
    obj = f->cls->tp_alloc(f->cls, 0);
    if (obj == NULL) {
        Py_DECREF(cell);
        return NULL;
    }
    holder = (FdBase *)obj;
    Py_INCREF(args[0]);
    holder->fd = args[0];
    holder->cell = cell;
    for (i = 0; i < f->n; i++) {
        PyObject **slot = (PyObject **)((char *)obj + f->offsets[i]);
        value = i + 1 < nargs ? args[i + 1] : f->defaults[i];
        Py_INCREF(value);
        Py_XSETREF(*slot, value);
    }
    return obj;
}

static PyMethodDef make_def = {"make", (PyCFunction)(void (*)(void))make_holder, METH_FASTCALL,
                               "make(fd, *values): a new holder (see factory)."};

static PyObject *factory(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *cls, *names, *defaults, *made;
    Factory *f;
    Py_ssize_t i;
    if (!PyArg_ParseTuple(args, "O!O!O!:factory", &PyType_Type, &cls, &PyTuple_Type, &names, &PyTuple_Type,
                          &defaults))
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)cls, &FdBaseType)) {
        PyErr_SetString(PyExc_TypeError, "factory: cls must be a subclass of FdBase");
        return NULL;
    }
    if (PyTuple_GET_SIZE(names) > MAX_SLOTS || PyTuple_GET_SIZE(defaults) > PyTuple_GET_SIZE(names)) {
        PyErr_SetString(PyExc_ValueError, "factory: at most 8 names, and no more defaults than names");
        return NULL;
    }
    f = PyObject_New(Factory, &FactoryType);
    if (f == NULL)
        return NULL;
    f->n = 0;
    Py_INCREF(cls);
    f->cls = (PyTypeObject *)cls;
    for (i = 0; i < PyTuple_GET_SIZE(names); i++) {
        PyObject *descr = PyObject_GetAttr(cls, PyTuple_GET_ITEM(names, i));
        PyMemberDef *member;
        Py_ssize_t first_default = PyTuple_GET_SIZE(names) - PyTuple_GET_SIZE(defaults);
        PyObject *d = i >= first_default ? PyTuple_GET_ITEM(defaults, i - first_default) : NULL;
        if (descr == NULL) {
            Py_DECREF(f);
            return NULL;
        }
        if (!Py_IS_TYPE(descr, &PyMemberDescr_Type) ||
            (member = ((PyMemberDescrObject *)descr)->d_member)->type != T_OBJECT_EX) {
            Py_DECREF(descr);
            Py_DECREF(f);
            PyErr_Format(PyExc_TypeError, "factory: %R is not a __slots__ attribute", PyTuple_GET_ITEM(names, i));
            return NULL;
        }
        f->offsets[i] = member->offset;
        Py_DECREF(descr);
        f->defaults[i] = d;
        Py_XINCREF(f->defaults[i]);
        f->n = i + 1;
    }
    made = PyCFunction_New(&make_def, (PyObject *)f);
    Py_DECREF(f);  /* the function keeps it */
    return made;
}

static PyObject *setup(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *h, *hooks, *run, *detaching, *closed;
    if (!PyArg_ParseTuple(args, "O!O!OOO:setup", &PyList_Type, &h, &PyDict_Type, &hooks, &run, &detaching, &closed))
        return NULL;
    Py_INCREF(h); Py_XSETREF(held, h);
    Py_INCREF(hooks); Py_XSETREF(close_hooks, hooks);
    Py_INCREF(run); Py_XSETREF(run_close_hooks, run);
    Py_INCREF(detaching); Py_XSETREF(close_detaching, detaching);
    Py_INCREF(closed); Py_XSETREF(closed_error, closed);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"factory", factory, METH_VARARGS,
     "factory(cls, names, defaults) -> make(fd, *values): a holder made and filled in C "
     "(defaults: the values of the last names, as a function's defaults)."},
    {"setup", setup, METH_VARARGS,
     "setup(held, close_hooks, run_close_hooks, close_detaching, closed): pydmabuf._fd's state."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "pydmabuf.uapi._fdcore", "The fd-owning base type in C (csrc/fdcore.c).", -1, module_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fdcore(void)
{
    PyObject *m;
    FdBaseType.tp_new = PyBaseObject_Type.tp_new;
    if (PyType_Ready(&FdBaseType) < 0 || PyType_Ready(&FactoryType) < 0)
        return NULL;
    m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddStringConstant(m, "SOURCE_HASH", SOURCE_HASH) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&FdBaseType);
    if (PyModule_AddObject(m, "FdBase", (PyObject *)&FdBaseType) < 0) {
        Py_DECREF(&FdBaseType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
