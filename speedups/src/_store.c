/* slaprobe_speedups._store: the collector's bulk inserts, stepped with the GIL released.
 *
 * Why: the collector's writer thread stores every result twice over (its `results` row and its
 * signed record in `record_log`). Through Python's sqlite3 each statement binds its parameters
 * under the GIL, and each step gives the GIL up and takes it back; with the event loop and the
 * decode worker's result thread running Python on the same GIL, the writer waited for it about
 * a third of its wall time in the ingest benchmark. Here a batch's values are read from the
 * Python objects first, under the GIL (and any value this code does not take makes the call
 * return NotImplemented before anything is written, so the caller runs the Python path); then
 * the GIL is released once and every row is bound and stepped in C, on the caller's own
 * connection and inside its open transaction.
 *
 * The connection's `sqlite3 *` is the first field after PyObject_HEAD of Python's
 * `sqlite3.Connection` (so from CPython 2.5 to 3.13, Modules/_sqlite/connection.h; this code reads
 * it on 3.11 to 3.13 only); the
 * SQLite functions are looked up in the library Python's `_sqlite3` module is linked with (the
 * same instance, the same connection mutex), so no SQLite headers or library are needed to
 * build. Each call cross-checks the handle against what Python's sqlite3 reports (the
 * transaction state and the total change count) and returns NotImplemented if they disagree.
 *
 * Values are bound as Python's sqlite3 binds them: int (bool included) as INTEGER, float as
 * REAL, str as UTF-8 TEXT, bytes and bytearray as BLOB, None as NULL. Integer columns may also
 * be array('q') (read as int64 directly).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <stdint.h>
#include <string.h>

/* ---- the SQLite C API this module uses (stable since SQLite 3.6; declared here, not included) */

typedef struct sqlite3 sqlite3;
typedef struct sqlite3_stmt sqlite3_stmt;

#define SQLITE_OK 0
#define SQLITE_ERROR 1
#define SQLITE_INTERNAL 2
#define SQLITE_PERM 3
#define SQLITE_NOMEM 7
#define SQLITE_NOTFOUND 12
#define SQLITE_CORRUPT 11
#define SQLITE_TOOBIG 18
#define SQLITE_CONSTRAINT 19
#define SQLITE_MISMATCH 20
#define SQLITE_MISUSE 21
#define SQLITE_RANGE 25
#define SQLITE_NOTADB 26
#define SQLITE_ROW 100
#define SQLITE_DONE 101
#define SQLITE_STATIC ((void (*)(void *))0)

static struct {
    int (*prepare_v2)(sqlite3 *, const char *, int, sqlite3_stmt **, const char **);
    int (*bind_parameter_count)(sqlite3_stmt *);
    int (*bind_int64)(sqlite3_stmt *, int, long long);
    int (*bind_double)(sqlite3_stmt *, int, double);
    int (*bind_text)(sqlite3_stmt *, int, const char *, int, void (*)(void *));
    int (*bind_blob)(sqlite3_stmt *, int, const void *, int, void (*)(void *));
    int (*bind_null)(sqlite3_stmt *, int);
    int (*step)(sqlite3_stmt *);
    int (*reset)(sqlite3_stmt *);
    int (*finalize)(sqlite3_stmt *);
    const char *(*errmsg)(sqlite3 *);
    int (*errcode)(sqlite3 *);
    int (*get_autocommit)(sqlite3 *);
    int (*total_changes)(sqlite3 *);
    int (*libversion_number)(void);
} api;

/* 0: not tried yet; 1: ready; -1: unavailable (every call answers NotImplemented). */
static int api_state = 0;
static PyTypeObject *connection_type = NULL;
static PyObject *sqlite3_module = NULL;

typedef struct {
    PyObject_HEAD
    sqlite3 *db;
} ConnectionHead;

static int load_api(void) {
    if (api_state != 0) return api_state;
    api_state = -1;
#if PY_VERSION_HEX < 0x030B0000 || PY_VERSION_HEX >= 0x030E0000
    /* The Connection layout is read only on the CPython versions it was checked against (3.11 to
     * 3.13); elsewhere every call answers NotImplemented and the Python path runs. */
    return api_state;
#endif
    PyObject *module = PyImport_ImportModule("sqlite3");
    if (module == NULL) return -1;
    PyObject *c_module = PyImport_ImportModule("_sqlite3");
    PyObject *type = PyObject_GetAttrString(module, "Connection");
    PyObject *file = c_module ? PyObject_GetAttrString(c_module, "__file__") : NULL;
    PyObject *version = PyObject_GetAttrString(module, "sqlite_version_info");
    const char *path = file && PyUnicode_Check(file) ? PyUnicode_AsUTF8(file) : NULL;
    void *lib = path ? dlopen(path, RTLD_LAZY | RTLD_NOLOAD) : NULL;
    if (lib != NULL && type != NULL && PyType_Check(type) && version != NULL) {
#define LOOK(field, name) *(void **)(&api.field) = dlsym(lib, name)
        LOOK(prepare_v2, "sqlite3_prepare_v2");
        LOOK(bind_parameter_count, "sqlite3_bind_parameter_count");
        LOOK(bind_int64, "sqlite3_bind_int64");
        LOOK(bind_double, "sqlite3_bind_double");
        LOOK(bind_text, "sqlite3_bind_text");
        LOOK(bind_blob, "sqlite3_bind_blob");
        LOOK(bind_null, "sqlite3_bind_null");
        LOOK(step, "sqlite3_step");
        LOOK(reset, "sqlite3_reset");
        LOOK(finalize, "sqlite3_finalize");
        LOOK(errmsg, "sqlite3_errmsg");
        LOOK(errcode, "sqlite3_errcode");
        LOOK(get_autocommit, "sqlite3_get_autocommit");
        LOOK(total_changes, "sqlite3_total_changes");
        LOOK(libversion_number, "sqlite3_libversion_number");
#undef LOOK
        void **all = (void **)&api;
        int complete = 1;
        for (size_t i = 0; i < sizeof(api) / sizeof(void *); i++) complete = complete && all[i] != NULL;
        /* The library found must be the one Python's sqlite3 reports. */
        if (complete) {
            long major = -1, minor = -1, patch = -1;
            if (PyTuple_Check(version) && PyTuple_GET_SIZE(version) == 3) {
                major = PyLong_AsLong(PyTuple_GET_ITEM(version, 0));
                minor = PyLong_AsLong(PyTuple_GET_ITEM(version, 1));
                patch = PyLong_AsLong(PyTuple_GET_ITEM(version, 2));
            }
            if (api.libversion_number() == major * 1000000 + minor * 1000 + patch) {
                Py_INCREF(type);
                connection_type = (PyTypeObject *)type;
                Py_INCREF(module);
                sqlite3_module = module;
                api_state = 1;
            }
        }
    }
    PyErr_Clear();
    Py_XDECREF(version);
    Py_XDECREF(file);
    Py_XDECREF(type);
    Py_XDECREF(c_module);
    Py_DECREF(module);
    return api_state;
}

/* The connection's handle, cross-checked against Python's sqlite3; NULL: not usable here. */
static sqlite3 *connection_db(PyObject *conn) {
    if (load_api() != 1 || !PyObject_TypeCheck(conn, connection_type)) return NULL;
    sqlite3 *db = ((ConnectionHead *)conn)->db;
    if (db == NULL) return NULL; /* closed: Python's sqlite3 says so in its own words */
    PyObject *in_txn = PyObject_GetAttrString(conn, "in_transaction");
    PyObject *changes = in_txn ? PyObject_GetAttrString(conn, "total_changes") : NULL;
    int ok = in_txn != NULL && changes != NULL && PyLong_Check(changes);
    /* Only inside an open transaction: Python's sqlite3 may begin one implicitly before an
     * INSERT, which this code does not imitate. */
    ok = ok && in_txn == Py_True && api.get_autocommit(db) == 0;
    ok = ok && PyLong_AsLong(changes) == (long)api.total_changes(db);
    PyErr_Clear();
    Py_XDECREF(in_txn);
    Py_XDECREF(changes);
    return ok ? db : NULL;
}

/* ---- values read under the GIL, bound without it */

enum { V_NULL, V_INT, V_REAL, V_TEXT, V_BLOB };

typedef struct {
    int kind;
    Py_ssize_t n;
    union {
        long long i;
        double d;
        const char *p;
    } v;
} Value;

typedef struct {
    Value *values;
    PyObject **held; /* strong references to the objects whose bytes `values` point into */
    Py_ssize_t n_held;
} Batch;

static void batch_free(Batch *b) {
    for (Py_ssize_t i = 0; i < b->n_held; i++) Py_DECREF(b->held[i]);
    PyMem_Free(b->held);
    PyMem_Free(b->values);
    b->held = NULL;
    b->values = NULL;
    b->n_held = 0;
}

/* One value; 0, or -1 for a value this code does not take (no exception left set). */
static int read_value(PyObject *o, Value *out, Batch *b) {
    if (o == Py_None) {
        out->kind = V_NULL;
    } else if (PyLong_Check(o)) {
        int overflow = 0;
        long long i = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (overflow || (i == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return -1;
        }
        out->kind = V_INT;
        out->v.i = i;
    } else if (PyFloat_Check(o)) {
        out->kind = V_REAL;
        out->v.d = PyFloat_AS_DOUBLE(o);
    } else if (PyUnicode_Check(o)) {
        Py_ssize_t n;
        const char *p = PyUnicode_AsUTF8AndSize(o, &n);
        if (p == NULL || n > INT32_MAX) {
            PyErr_Clear();
            return -1;
        }
        out->kind = V_TEXT;
        out->v.p = p;
        out->n = n;
        Py_INCREF(o);
        b->held[b->n_held++] = o;
    } else if (PyBytes_Check(o) || PyByteArray_Check(o)) {
        Py_ssize_t n = PyBytes_Check(o) ? PyBytes_GET_SIZE(o) : PyByteArray_GET_SIZE(o);
        if (n > INT32_MAX) return -1;
        out->kind = V_BLOB;
        out->v.p = PyBytes_Check(o) ? PyBytes_AS_STRING(o) : PyByteArray_AS_STRING(o);
        out->n = n;
        Py_INCREF(o);
        b->held[b->n_held++] = o;
    } else {
        return -1;
    }
    return 0;
}

/* Column j of rows start..stop-1 into values[(i - start) * width + j]; 0, or -1 (not taken). */
static int read_column(PyObject *col, Py_ssize_t start, Py_ssize_t stop, Py_ssize_t j, Py_ssize_t width,
                       Batch *b) {
    if (PyObject_CheckBuffer(col) && !PyBytes_Check(col) && !PyByteArray_Check(col)) {
        Py_buffer view;
        if (PyObject_GetBuffer(col, &view, PyBUF_FORMAT | PyBUF_ND) < 0) {
            PyErr_Clear();
            return -1;
        }
        int ok = view.itemsize == 8 && view.ndim == 1 && view.format != NULL &&
                 (strcmp(view.format, "q") == 0 || strcmp(view.format, "l") == 0) &&
                 view.shape[0] >= stop;
        if (ok) {
            const long long *a = (const long long *)view.buf;
            for (Py_ssize_t i = start; i < stop; i++) {
                Value *v = &b->values[(i - start) * width + j];
                v->kind = V_INT;
                v->v.i = a[i];
            }
        }
        PyBuffer_Release(&view);
        return ok ? 0 : -1;
    }
    PyObject *seq = PySequence_Fast(col, "a column");
    if (seq == NULL) {
        PyErr_Clear();
        return -1;
    }
    int rc = PySequence_Fast_GET_SIZE(seq) >= stop ? 0 : -1;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = start; rc == 0 && i < stop; i++)
        rc = read_value(items[i], &b->values[(i - start) * width + j], b);
    Py_DECREF(seq);
    return rc;
}

static int batch_alloc(Batch *b, Py_ssize_t rows, Py_ssize_t width) {
    if (rows > 0 && width > PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(Value) / rows) return -1;
    b->values = PyMem_Malloc(sizeof(Value) * (size_t)(rows * width + 1));
    b->held = PyMem_Malloc(sizeof(PyObject *) * (size_t)(rows * width + 1));
    b->n_held = 0;
    if (b->values == NULL || b->held == NULL) {
        batch_free(b);
        return -1;
    }
    return 0;
}

/* ---- errors as Python's sqlite3 raises them */

static void raise_sqlite(int code, const char *message) {
    const char *name;
    switch (code & 0xff) {
    case SQLITE_INTERNAL:
    case SQLITE_NOTFOUND:
        name = "InternalError";
        break;
    case SQLITE_NOMEM:
        PyErr_NoMemory();
        return;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        name = "DatabaseError";
        break;
    case SQLITE_TOOBIG:
        name = "DataError";
        break;
    case SQLITE_CONSTRAINT:
    case SQLITE_MISMATCH:
        name = "IntegrityError";
        break;
    case SQLITE_MISUSE:
    case SQLITE_RANGE:
        name = "InterfaceError";
        break;
    default:
        name = "OperationalError";
    }
    PyObject *exc = PyObject_GetAttrString(sqlite3_module, name);
    if (exc != NULL) {
        PyErr_SetString(exc, message);
        Py_DECREF(exc);
    }
}

/* Prepare `sql` (one statement of `width` parameters) and insert the batch's rows, the GIL
 * released. Returns the number of rows changed, or NULL with an exception set. */
static PyObject *run(sqlite3 *db, const char *sql, Py_ssize_t sql_len, Py_ssize_t width, Batch *b, Py_ssize_t rows,
                     int *not_taken) {
    sqlite3_stmt *stmt = NULL;
    const char *tail = NULL;
    int rc, before, after, bound = 0;
    char message[512] = "";
    Py_BEGIN_ALLOW_THREADS;
    before = api.total_changes(db);
    rc = api.prepare_v2(db, sql, (int)sql_len + 1, &stmt, &tail);
    if (rc != SQLITE_OK) {
        snprintf(message, sizeof(message), "%s", api.errmsg(db));
    } else if (stmt == NULL || (tail != NULL && strspn(tail, " \t\r\n;") != strlen(tail)) ||
               api.bind_parameter_count(stmt) != width) {
        bound = -1; /* not one statement of `width` parameters: the Python path says what is wrong */
    } else {
        for (Py_ssize_t r = 0; r < rows && rc == SQLITE_OK; r++) {
            const Value *row = &b->values[r * width];
            for (int j = 0; j < (int)width && rc == SQLITE_OK; j++) {
                const Value *v = &row[j];
                switch (v->kind) {
                case V_NULL:
                    rc = api.bind_null(stmt, j + 1);
                    break;
                case V_INT:
                    rc = api.bind_int64(stmt, j + 1, v->v.i);
                    break;
                case V_REAL:
                    rc = api.bind_double(stmt, j + 1, v->v.d);
                    break;
                case V_TEXT:
                    rc = api.bind_text(stmt, j + 1, v->v.p, (int)v->n, SQLITE_STATIC);
                    break;
                default:
                    rc = api.bind_blob(stmt, j + 1, v->v.p, (int)v->n, SQLITE_STATIC);
                }
            }
            if (rc == SQLITE_OK) {
                rc = api.step(stmt);
                if (rc == SQLITE_DONE || rc == SQLITE_ROW) rc = api.reset(stmt);
            }
        }
        if (rc != SQLITE_OK) {
            api.reset(stmt); /* the step's real error is the connection's now */
            rc = api.errcode(db);
            snprintf(message, sizeof(message), "%s", api.errmsg(db));
            if (rc == SQLITE_OK) rc = SQLITE_ERROR;
        }
    }
    if (stmt != NULL) api.finalize(stmt);
    after = api.total_changes(db);
    Py_END_ALLOW_THREADS;
    if (bound < 0) {
        *not_taken = 1;
        return NULL;
    }
    if (rc != SQLITE_OK) {
        raise_sqlite(rc, message);
        return NULL;
    }
    return PyLong_FromLong((long)(after - before));
}

static PyObject *finish(PyObject *result, int not_taken) {
    if (not_taken) Py_RETURN_NOTIMPLEMENTED;
    return result;
}

static PyObject *execute_columns(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *conn, *columns;
    const char *sql;
    Py_ssize_t sql_len, start, stop;
    if (!PyArg_ParseTuple(args, "Os#Onn:execute_columns", &conn, &sql, &sql_len, &columns, &start, &stop))
        return NULL;
    sqlite3 *db = connection_db(conn);
    PyObject *cols = db ? PySequence_Fast(columns, "columns") : NULL;
    if (cols == NULL) {
        PyErr_Clear();
        Py_RETURN_NOTIMPLEMENTED;
    }
    Py_ssize_t width = PySequence_Fast_GET_SIZE(cols);
    Batch b = {NULL, NULL, 0};
    int not_taken = width == 0 || start < 0 || stop < start || batch_alloc(&b, stop - start, width) < 0;
    for (Py_ssize_t j = 0; !not_taken && j < width; j++)
        not_taken = read_column(PySequence_Fast_GET_ITEM(cols, j), start, stop, j, width, &b) < 0;
    PyObject *result = not_taken ? NULL : run(db, sql, sql_len, width, &b, stop - start, &not_taken);
    batch_free(&b);
    Py_DECREF(cols);
    return finish(result, not_taken);
}

static PyObject *execute_rows(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *conn, *rows;
    const char *sql;
    Py_ssize_t sql_len, width;
    if (!PyArg_ParseTuple(args, "Os#nO:execute_rows", &conn, &sql, &sql_len, &width, &rows)) return NULL;
    sqlite3 *db = connection_db(conn);
    PyObject *seq = db ? PySequence_Fast(rows, "rows") : NULL;
    if (seq == NULL) {
        PyErr_Clear();
        Py_RETURN_NOTIMPLEMENTED;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Batch b = {NULL, NULL, 0};
    int not_taken = width <= 0 || batch_alloc(&b, n, width) < 0;
    for (Py_ssize_t r = 0; !not_taken && r < n; r++) {
        PyObject *row = PySequence_Fast_GET_ITEM(seq, r);
        if (!(PyTuple_Check(row) || PyList_Check(row)) || PySequence_Fast_GET_SIZE(row) != width) {
            not_taken = 1;
            break;
        }
        PyObject **items = PySequence_Fast_ITEMS(row);
        for (Py_ssize_t j = 0; !not_taken && j < width; j++)
            not_taken = read_value(items[j], &b.values[r * width + j], &b) < 0;
    }
    PyObject *result = not_taken ? NULL : run(db, sql, sql_len, width, &b, n, &not_taken);
    batch_free(&b);
    Py_DECREF(seq);
    return finish(result, not_taken);
}

static PyObject *available(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyBool_FromLong(load_api() == 1);
}

static PyMethodDef methods[] = {
    {"execute_columns", execute_columns, METH_VARARGS,
     "execute_columns(conn, sql, columns, start, stop): rows start..stop-1 of the columns through the "
     "one-row statement sql, in conn's open transaction; the rows changed, or NotImplemented."},
    {"execute_rows", execute_rows, METH_VARARGS,
     "execute_rows(conn, sql, width, rows): the same for rows (tuples or lists of width values)."},
    {"available", available, METH_NOARGS, "available(): whether SQLite's functions were found."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_store", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__store(void) { return PyModule_Create(&module); }
