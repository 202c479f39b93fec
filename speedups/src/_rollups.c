/* slaprobe_speedups._rollups: collector.rollups.fold, compiled.
 *
 * Why: the fold (result rows -> slot bits per bucket and counts per hour) runs for every stored
 * result, in the decode worker or in the writer, and in Python it costs a few microseconds a row,
 * a fifth of the decode worker's time. This is the same loop over the same dicts and lists, with
 * the same Python integer semantics (floor division, arbitrary-width bit masks), so its answers
 * are those of the Python fold; tests hold the two equal.
 *
 * Two passes: the rows are read and converted first, so any input this code does not take
 * (a non-integer, a value past 64 bits, a mapping that is not a dict) raises TypeError or
 * OverflowError before anything is changed; fold() then returns NotImplemented and the caller
 * runs the Python fold. (A grid interval or offset past 2**62 ns, far beyond what the catalogue
 * accepts, raises OverflowError.)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NS_PER_MS 1000000LL
#define MINUTE (60LL * 1000000000LL)
#define HOUR (60LL * MINUTE)
/* Times, intervals and offsets within +-2**62 ns keep every sum and product below in int64. */
#define TIME_BOUND ((int64_t)1 << 62)

static const int64_t SLOT_BUCKETS[] = {60 * MINUTE, 30 * MINUTE, 20 * MINUTE, 15 * MINUTE, 10 * MINUTE,
                                       5 * MINUTE,  4 * MINUTE,  3 * MINUTE,  2 * MINUTE,  1 * MINUTE};

typedef struct {
    int64_t check, agent, t, dur, off;
    char ok, deg, internal, sync;
} Row;

/* Module configuration, set once by configure(): the latency edges and the clock ladder. */
static int64_t *edges = NULL;
static Py_ssize_t n_edges = 0;
static uint64_t *ladder = NULL;
static Py_ssize_t n_ladder = 0;
static PyObject *internal_kind = NULL; /* the error kind of results that count as neither */

/* Python's // and % on int64 (floor semantics); the caller guarantees b != 0. */
static inline int64_t floordiv(int64_t a, int64_t b) {
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) q -= 1;
    return q;
}

static inline int64_t pymod(int64_t a, int64_t b) { return a - floordiv(a, b) * b; }

static Py_ssize_t bisect_left_i64(const int64_t *a, Py_ssize_t n, int64_t x) {
    Py_ssize_t lo = 0, hi = n;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (a[mid] < x) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static Py_ssize_t bisect_left_u64(const uint64_t *a, Py_ssize_t n, uint64_t x) {
    Py_ssize_t lo = 0, hi = n;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (a[mid] < x) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static int cmp_rows(const void *pa, const void *pb) {
    const Row *a = pa, *b = pb;
    if (a->check != b->check) return a->check < b->check ? -1 : 1;
    if (a->agent != b->agent) return a->agent < b->agent ? -1 : 1;
    if (a->t != b->t) return a->t < b->t ? -1 : 1;
    return 0;
}

static int as_i64(PyObject *o, int64_t *out) {
    if (!PyLong_Check(o)) {
        PyErr_SetString(PyExc_TypeError, "fold: an integer column holds a non-integer");
        return -1;
    }
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred()) return -1;
    *out = (int64_t)v;
    return 0;
}

/* slot_bucket(interval): the longest bucket dividing an hour that holds at most 60 slots. */
static int slot_bucket(int64_t interval, int64_t *out) {
    if (interval == 0) {
        PyErr_SetString(PyExc_ZeroDivisionError, "integer division or modulo by zero");
        return -1;
    }
    for (size_t i = 0; i < sizeof SLOT_BUCKETS / sizeof SLOT_BUCKETS[0]; i++) {
        if (-floordiv(-SLOT_BUCKETS[i], interval) <= 60) {
            *out = SLOT_BUCKETS[i];
            return 0;
        }
    }
    *out = MINUTE;
    return 0;
}

/* list[i] += delta for a list of Python ints. */
static int list_add(PyObject *list, Py_ssize_t i, long delta) {
    PyObject *old = PyList_GET_ITEM(list, i);
    PyObject *d = PyLong_FromLong(delta);
    if (d == NULL) return -1;
    PyObject *sum = PyNumber_Add(old, d);
    Py_DECREF(d);
    if (sum == NULL) return -1;
    PyList_SetItem(list, i, sum); /* steals sum, drops old */
    return 0;
}

/* list[i] |= 1 << shift. */
static int list_or_bit(PyObject *list, Py_ssize_t i, int64_t shift) {
    PyObject *bit;
    if (shift < 0) {
        PyErr_SetString(PyExc_ValueError, "negative shift count");
        return -1;
    }
    if (shift < 63) {
        bit = PyLong_FromLongLong((long long)1 << shift);
    } else {
        PyObject *one = PyLong_FromLong(1), *n = PyLong_FromLongLong(shift);
        bit = (one && n) ? PyNumber_Lshift(one, n) : NULL;
        Py_XDECREF(one);
        Py_XDECREF(n);
    }
    if (bit == NULL) return -1;
    PyObject *v = PyNumber_Or(PyList_GET_ITEM(list, i), bit);
    Py_DECREF(bit);
    if (v == NULL) return -1;
    PyList_SetItem(list, i, v);
    return 0;
}

/* hist[bucket] = hist.get(bucket, 0) + 1 */
static int hist_add(PyObject *hist, Py_ssize_t bucket) {
    if (!PyDict_Check(hist)) {
        PyErr_SetString(PyExc_TypeError, "fold: a histogram is not a dict");
        return -1;
    }
    PyObject *key = PyLong_FromSsize_t(bucket);
    if (key == NULL) return -1;
    PyObject *old = PyDict_GetItemWithError(hist, key);
    PyObject *v;
    if (old == NULL) {
        if (PyErr_Occurred()) {
            Py_DECREF(key);
            return -1;
        }
        v = PyLong_FromLong(1);
    } else {
        PyObject *one = PyLong_FromLong(1);
        v = one ? PyNumber_Add(old, one) : NULL;
        Py_XDECREF(one);
    }
    if (v == NULL) {
        Py_DECREF(key);
        return -1;
    }
    int rc = PyDict_SetItem(hist, key, v);
    Py_DECREF(key);
    Py_DECREF(v);
    return rc;
}

static PyObject *key4(int64_t a, int64_t b, int64_t c, int64_t d) {
    return Py_BuildValue("(LLLL)", (long long)a, (long long)b, (long long)c, (long long)d);
}

/* A new hour aggregate: [n_ok, n_fail, n_internal, n_unsynced, latency hist, clock hist, 0]. */
static PyObject *new_hour(int64_t unused_a, int64_t unused_b) {
    (void)unused_a;
    (void)unused_b;
    return Py_BuildValue("[iiiiNNi]", 0, 0, 0, 0, PyDict_New(), PyDict_New(), 0);
}

/* A new slot bucket: [first_slot, n_due, ok, fail, deg] from its first slot and end slot. */
static PyObject *new_slot_bucket(int64_t first, int64_t end) {
    return Py_BuildValue("[LLiii]", (long long)first, (long long)(end - first), 0, 0, 0);
}

/* dict[key], put there by make(a, b) when missing: a new reference, or NULL with an exception.
 * Steals key (NULL: the exception of making it). */
static PyObject *get_or_put(PyObject *dict, PyObject *key, PyObject *(*make)(int64_t, int64_t), int64_t a,
                            int64_t b) {
    if (key == NULL) return NULL;
    PyObject *value = PyDict_GetItemWithError(dict, key);
    if (value != NULL) {
        Py_INCREF(value);
    } else if (!PyErr_Occurred()) {
        value = make(a, b);
        if (value != NULL && PyDict_SetItem(dict, key, value) < 0) Py_CLEAR(value);
    }
    Py_DECREF(key);
    return value;
}

/* A list whose items this code reads as ints (d[0]) must be a list of the expected length. */
static int check_list(PyObject *o, Py_ssize_t n, const char *what) {
    if (!PyList_Check(o) || PyList_GET_SIZE(o) < n) {
        PyErr_Format(PyExc_TypeError, "fold: %s is not a list of %zd items", what, n);
        return -1;
    }
    return 0;
}

/* Read rows (a list of sequences) at the pick positions into a C array. */
static Row *read_rows(PyObject *rows, const Py_ssize_t pick[9], Py_ssize_t *n_out) {
    Py_ssize_t n = PyList_GET_SIZE(rows);
    Row *out = PyMem_Malloc((size_t)(n > 0 ? n : 1) * sizeof(Row));
    if (out == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *r = PyList_GET_ITEM(rows, i);
        if (!PyTuple_Check(r) && !PyList_Check(r)) {
            PyErr_SetString(PyExc_TypeError, "fold: a row is not a tuple or list");
            goto fail;
        }
        Py_ssize_t len = PySequence_Fast_GET_SIZE(r);
        PyObject **items = PySequence_Fast_ITEMS(r);
        for (int j = 0; j < 9; j++) {
            if (pick[j] < 0 || pick[j] >= len) {
                PyErr_SetString(PyExc_IndexError, "fold: a row is shorter than the pick");
                goto fail;
            }
        }
        Row *w = &out[i];
        /* pick: agent, check, t, dur, ok, deg, kind, off, sync */
        if (as_i64(items[pick[0]], &w->agent) < 0 || as_i64(items[pick[1]], &w->check) < 0 ||
            as_i64(items[pick[2]], &w->t) < 0 || as_i64(items[pick[7]], &w->off) < 0)
            goto fail;
        if (w->t > TIME_BOUND || w->t < -TIME_BOUND) {
            PyErr_SetString(PyExc_OverflowError, "fold: a time past 2**62 ns");
            goto fail;
        }
        int b;
        if ((b = PyObject_IsTrue(items[pick[4]])) < 0) goto fail;
        w->ok = (char)b;
        if ((b = PyObject_IsTrue(items[pick[5]])) < 0) goto fail;
        w->deg = (char)b;
        if ((b = PyObject_IsTrue(items[pick[8]])) < 0) goto fail;
        w->sync = (char)b;
        if ((b = PyObject_RichCompareBool(items[pick[6]], internal_kind, Py_EQ)) < 0) goto fail;
        w->internal = (char)b;
        /* The duration is read only for successful, non-internal rows, as the Python fold does. */
        w->dur = 0;
        if (w->ok && !w->internal && as_i64(items[pick[3]], &w->dur) < 0) goto fail;
    }
    *n_out = n;
    return out;
fail:
    PyMem_Free(out);
    return NULL;
}

static PyObject *fold_read(Row *rs, Py_ssize_t n, PyObject *grids, PyObject *slots, PyObject *hours,
                           PyObject *grid_fn, PyObject *grid_end_fn);

/* Read the fold's nine columns (agent, check, t, dur, ok, deg, kind, off, sync: lists, or for the
 * integer ones also array('q')) into a C array, as read_rows reads rows. */
static Row *read_columns(PyObject *columns, Py_ssize_t *n_out) {
    PyObject *fast[9] = {NULL};
    Py_buffer views[9];
    int viewed[9] = {0};
    Row *out = NULL;
    Py_ssize_t n = -1;
    if (!PyList_Check(columns) || PyList_GET_SIZE(columns) != 9) {
        PyErr_SetString(PyExc_TypeError, "fold_columns: nine columns expected");
        return NULL;
    }
    for (int j = 0; j < 9; j++) {
        PyObject *col = PyList_GET_ITEM(columns, j);
        Py_ssize_t len;
        if (j != 6 && PyObject_CheckBuffer(col) && !PyBytes_Check(col) && !PyByteArray_Check(col)) {
            if (PyObject_GetBuffer(col, &views[j], PyBUF_FORMAT | PyBUF_ND) < 0) goto fail;
            viewed[j] = 1;
            if (views[j].itemsize != 8 || views[j].ndim != 1 || views[j].format == NULL ||
                (strcmp(views[j].format, "q") != 0 && strcmp(views[j].format, "l") != 0)) {
                PyErr_SetString(PyExc_TypeError, "fold_columns: an array that is not of int64");
                goto fail;
            }
            len = views[j].shape[0];
        } else if (PyList_Check(col) || PyTuple_Check(col)) {
            Py_INCREF(col);
            fast[j] = col;
            len = PySequence_Fast_GET_SIZE(col);
        } else {
            PyErr_SetString(PyExc_TypeError, "fold_columns: a column is not a list or an int64 array");
            goto fail;
        }
        if (n >= 0 && len != n) {
            PyErr_SetString(PyExc_IndexError, "fold_columns: columns of different lengths");
            goto fail;
        }
        n = len;
    }
    out = PyMem_Malloc((size_t)(n > 0 ? n : 1) * sizeof(Row));
    if (out == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t v[9];
        int truth[9];
        for (int j = 0; j < 9; j++) {
            if (j == 6) continue; /* the error kind, compared below */
            if (viewed[j]) {
                v[j] = ((const int64_t *)views[j].buf)[i];
                truth[j] = v[j] != 0;
                continue;
            }
            PyObject *item = PySequence_Fast_ITEMS(fast[j])[i];
            if (j == 4 || j == 5 || j == 8) {
                if ((truth[j] = PyObject_IsTrue(item)) < 0) goto fail;
            } else if (j == 3) {
                v[j] = 0; /* read below, only where the Python fold reads it */
            } else if (as_i64(item, &v[j]) < 0) {
                goto fail;
            }
        }
        Row *w = &out[i];
        w->agent = v[0];
        w->check = v[1];
        w->t = v[2];
        w->off = v[7];
        if (w->t > TIME_BOUND || w->t < -TIME_BOUND) {
            PyErr_SetString(PyExc_OverflowError, "fold: a time past 2**62 ns");
            goto fail;
        }
        w->ok = (char)truth[4];
        w->deg = (char)truth[5];
        w->sync = (char)truth[8];
        int b = PyObject_RichCompareBool(PySequence_Fast_ITEMS(fast[6])[i], internal_kind, Py_EQ);
        if (b < 0) goto fail;
        w->internal = (char)b;
        w->dur = 0;
        if (w->ok && !w->internal) {
            if (viewed[3]) w->dur = v[3];
            else if (as_i64(PySequence_Fast_ITEMS(fast[3])[i], &w->dur) < 0) goto fail;
        }
    }
    *n_out = n;
    for (int j = 0; j < 9; j++) {
        if (viewed[j]) PyBuffer_Release(&views[j]);
        Py_XDECREF(fast[j]);
    }
    return out;
fail:
    PyMem_Free(out);
    for (int j = 0; j < 9; j++) {
        if (viewed[j]) PyBuffer_Release(&views[j]);
        Py_XDECREF(fast[j]);
    }
    return NULL;
}

static PyObject *fold_columns(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *columns, *grids, *slots, *hours, *grid_fn, *grid_end_fn;
    if (!PyArg_ParseTuple(args, "OO!O!O!OO", &columns, &PyDict_Type, &grids, &PyDict_Type, &slots, &PyDict_Type,
                          &hours, &grid_fn, &grid_end_fn))
        return NULL;
    if (edges == NULL || internal_kind == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "fold: configure() was not called");
        return NULL;
    }
    Py_ssize_t n = 0;
    Row *rs = read_columns(columns, &n);
    return fold_read(rs, n, grids, slots, hours, grid_fn, grid_end_fn);
}

static PyObject *fold(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *rows, *pick_obj, *grids, *slots, *hours, *grid_fn, *grid_end_fn;
    if (!PyArg_ParseTuple(args, "O!OO!O!O!OO", &PyList_Type, &rows, &pick_obj, &PyDict_Type, &grids,
                          &PyDict_Type, &slots, &PyDict_Type, &hours, &grid_fn, &grid_end_fn))
        return NULL;
    if (edges == NULL || internal_kind == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "fold: configure() was not called");
        return NULL;
    }
    Py_ssize_t pick[9];
    PyObject *pick_fast = PySequence_Fast(pick_obj, "fold: pick is not a sequence");
    if (pick_fast == NULL) return NULL;
    if (PySequence_Fast_GET_SIZE(pick_fast) != 9) {
        Py_DECREF(pick_fast);
        PyErr_SetString(PyExc_TypeError, "fold: pick needs 9 positions");
        return NULL;
    }
    for (int j = 0; j < 9; j++) {
        pick[j] = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(pick_fast, j));
        if (pick[j] == -1 && PyErr_Occurred()) {
            Py_DECREF(pick_fast);
            return NULL;
        }
    }
    Py_DECREF(pick_fast);

    Py_ssize_t n = 0;
    Row *rs = read_rows(rows, pick, &n);
    return fold_read(rs, n, grids, slots, hours, grid_fn, grid_end_fn);
}

/* Rows this code does not take (rs NULL, nothing has changed yet): NotImplemented, and the caller
 * folds in Python, which gives its own answer or error for them. Else the fold of rs (freed). */
static PyObject *fold_read(Row *rs, Py_ssize_t n, PyObject *grids, PyObject *slots, PyObject *hours,
                           PyObject *grid_fn, PyObject *grid_end_fn) {
    if (rs == NULL) {
        if (PyErr_ExceptionMatches(PyExc_TypeError) || PyErr_ExceptionMatches(PyExc_OverflowError) ||
            PyErr_ExceptionMatches(PyExc_IndexError)) {
            PyErr_Clear();
            Py_RETURN_NOTIMPLEMENTED;
        }
        return NULL;
    }
    qsort(rs, (size_t)n, sizeof(Row), cmp_rows);

    /* From here on the dicts change: an error leaves them part-folded, as the Python fold does. */
    int64_t cur_check = -1, cur_agent = -1, lo = 0, hi = 0, slo = 0, shi = 0;
    int64_t interval = 1, offset = 1, ims = 1, size = 1, grid_until = 0, first = 0;
    PyObject *c = NULL, *d = NULL; /* strong references to the current hour and slot lists */
    const int64_t step = (int64_t)ladder[0];
    const Py_ssize_t last_edge = n_edges - 1;

    for (Py_ssize_t i = 0; i < n; i++) {
        const Row *r = &rs[i];
        int64_t check = r->check, agent = r->agent, t = r->t;
        if (check != cur_check || agent != cur_agent || (grid_until && t >= grid_until)) {
            PyObject *ck = PyLong_FromLongLong(check);
            if (ck == NULL) goto error;
            PyObject *versions = PyDict_GetItemWithError(grids, ck); /* borrowed */
            if (versions == NULL && PyErr_Occurred()) {
                Py_DECREF(ck);
                goto error;
            }
            if (versions != NULL && PyList_Check(versions) && PyList_GET_SIZE(versions) == 1) {
                PyObject *g = PyList_GET_ITEM(versions, 0);
                if (!PyTuple_Check(g) || PyTuple_GET_SIZE(g) < 3) {
                    Py_DECREF(ck);
                    PyErr_SetString(PyExc_TypeError, "fold: a grid is not a (from, interval, offset) tuple");
                    goto error;
                }
                if (as_i64(PyTuple_GET_ITEM(g, 1), &interval) < 0 || as_i64(PyTuple_GET_ITEM(g, 2), &offset) < 0) {
                    Py_DECREF(ck);
                    goto error;
                }
                grid_until = 0;
            } else {
                PyObject *t_obj = PyLong_FromLongLong(t);
                PyObject *got = t_obj ? PyObject_CallFunctionObjArgs(grid_fn, grids, ck, t_obj, NULL) : NULL;
                PyObject *end = got ? PyObject_CallFunctionObjArgs(grid_end_fn, grids, ck, t_obj, NULL) : NULL;
                Py_XDECREF(t_obj);
                int bad = end == NULL;
                if (!bad && (!PyTuple_Check(got) || PyTuple_GET_SIZE(got) != 2)) {
                    PyErr_SetString(PyExc_TypeError, "fold: _grid did not give (interval, offset)");
                    bad = 1;
                }
                if (!bad && (as_i64(PyTuple_GET_ITEM(got, 0), &interval) < 0 ||
                             as_i64(PyTuple_GET_ITEM(got, 1), &offset) < 0 || as_i64(end, &grid_until) < 0))
                    bad = 1;
                Py_XDECREF(got);
                Py_XDECREF(end);
                if (bad) {
                    Py_DECREF(ck);
                    goto error;
                }
            }
            Py_DECREF(ck);
            if (interval > TIME_BOUND || interval < -TIME_BOUND || offset > TIME_BOUND || offset < -TIME_BOUND) {
                PyErr_SetString(PyExc_OverflowError, "fold: a grid interval or offset past 2**62 ns");
                goto error;
            }
            if (interval == 0) {
                PyErr_SetString(PyExc_ZeroDivisionError, "integer division or modulo by zero");
                goto error;
            }
            ims = floordiv(interval, NS_PER_MS);
            if (slot_bucket(interval, &size) < 0) goto error;
            cur_check = check;
            cur_agent = agent;
            hi = 0;
            shi = 0;
        }
        if (!(lo <= t && t < hi)) {
            lo = t - pymod(t, HOUR);
            hi = lo + HOUR;
            PyObject *found = get_or_put(hours, key4(check, lo, agent, ims), new_hour, 0, 0);
            if (found == NULL) goto error;
            Py_XSETREF(c, found);
            if (check_list(c, 6, "an hour aggregate") < 0) goto error;
        }
        if (c == NULL) {
            PyErr_SetString(PyExc_IndexError, "list index out of range");
            goto error;
        }
        if (r->internal) {
            if (list_add(c, 2, 1) < 0) goto error;
            continue;
        }
        int64_t k = floordiv(t - offset, interval);
        int64_t instant = offset + k * interval;
        if (!(slo <= instant && instant < shi)) {
            slo = instant - pymod(instant, size);
            shi = slo + size;
            PyObject *known =
                get_or_put(slots, key4(check, ims, slo, agent), new_slot_bucket, -floordiv(offset - slo, interval),
                           -floordiv(offset - shi, interval));
            if (known == NULL) goto error;
            Py_XSETREF(d, known);
            if (check_list(d, 5, "a slot bucket") < 0 || as_i64(PyList_GET_ITEM(d, 0), &first) < 0) goto error;
        }
        if (d == NULL) {
            PyErr_SetString(PyExc_IndexError, "list index out of range");
            goto error;
        }
        int64_t shift = k - first;
        if (r->ok) {
            if (list_or_bit(d, 2, shift) < 0) goto error;
            if (r->deg && list_or_bit(d, 4, shift) < 0) goto error;
            if (list_add(c, 0, 1) < 0) goto error;
            Py_ssize_t lb = bisect_left_i64(edges, n_edges, r->dur);
            if (lb > last_edge) lb = last_edge;
            if (hist_add(PyList_GET_ITEM(c, 4), lb) < 0) goto error;
        } else {
            if (list_or_bit(d, 3, shift) < 0) goto error;
            if (list_add(c, 1, 1) < 0) goto error;
        }
        int64_t off = r->off;
        if (!(-step <= off && off <= step)) {
            uint64_t mag = off < 0 ? (uint64_t)0 - (uint64_t)off : (uint64_t)off;
            if (hist_add(PyList_GET_ITEM(c, 5), bisect_left_u64(ladder, n_ladder, mag)) < 0) goto error;
        }
        if (!r->sync && list_add(c, 3, 1) < 0) goto error;
    }
    Py_XDECREF(c);
    Py_XDECREF(d);
    PyMem_Free(rs);
    Py_RETURN_NONE;
error:
    Py_XDECREF(c);
    Py_XDECREF(d);
    PyMem_Free(rs);
    return NULL;
}

/* into[i] = into[i] op more[i] for Python ints (op: PyNumber_Or or PyNumber_Add). */
static int list_op(PyObject *into, PyObject *more, Py_ssize_t i, binaryfunc op) {
    PyObject *v = op(PyList_GET_ITEM(into, i), PyList_GET_ITEM(more, i));
    if (v == NULL) return -1;
    PyList_SetItem(into, i, v);
    return 0;
}

/* into[k] = into.get(k, 0) + v for every k, v of more (two dicts). */
static int hist_merge(PyObject *into, PyObject *more) {
    if (!PyDict_Check(into) || !PyDict_Check(more)) {
        PyErr_SetString(PyExc_TypeError, "merge: a histogram is not a dict");
        return -1;
    }
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(more, &pos, &k, &v)) {
        PyObject *old = PyDict_GetItemWithError(into, k);
        PyObject *sum;
        if (old == NULL) {
            if (PyErr_Occurred()) return -1;
            Py_INCREF(v);
            sum = v;
        } else {
            sum = PyNumber_Add(old, v);
            if (sum == NULL) return -1;
        }
        int rc = PyDict_SetItem(into, k, sum);
        Py_DECREF(sum);
        if (rc < 0) return -1;
    }
    return 0;
}

/* merge(slots, hours, more_slots, more_hours): collector.rollups.merge, compiled. */
static PyObject *merge(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *slots, *hours, *more_slots, *more_hours;
    if (!PyArg_ParseTuple(args, "O!O!O!O!", &PyDict_Type, &slots, &PyDict_Type, &hours, &PyDict_Type,
                          &more_slots, &PyDict_Type, &more_hours))
        return NULL;
    Py_ssize_t pos = 0;
    PyObject *key, *v;
    while (PyDict_Next(more_slots, &pos, &key, &v)) {
        if (check_list(v, 5, "a slot bucket") < 0) return NULL;
        PyObject *d = PyDict_GetItemWithError(slots, key);
        if (d == NULL) {
            if (PyErr_Occurred()) return NULL;
            PyObject *copy = PyList_GetSlice(v, 0, PyList_GET_SIZE(v));
            if (copy == NULL) return NULL;
            int rc = PyDict_SetItem(slots, key, copy);
            Py_DECREF(copy);
            if (rc < 0) return NULL;
            continue;
        }
        if (check_list(d, 5, "a slot bucket") < 0) return NULL;
        for (Py_ssize_t i = 2; i < 5; i++)
            if (list_op(d, v, i, PyNumber_Or) < 0) return NULL;
    }
    pos = 0;
    while (PyDict_Next(more_hours, &pos, &key, &v)) {
        if (check_list(v, 7, "an hour aggregate") < 0) return NULL;
        PyObject *c = PyDict_GetItemWithError(hours, key);
        if (!PyDict_Check(PyList_GET_ITEM(v, 4)) || !PyDict_Check(PyList_GET_ITEM(v, 5))) {
            PyErr_SetString(PyExc_TypeError, "merge: a histogram is not a dict");
            return NULL;
        }
        if (c == NULL) {
            if (PyErr_Occurred()) return NULL;
            PyObject *h4 = PyDict_Copy(PyList_GET_ITEM(v, 4));
            PyObject *h5 = h4 ? PyDict_Copy(PyList_GET_ITEM(v, 5)) : NULL;
            PyObject *fresh = h5 ? Py_BuildValue("[OOOONNO]", PyList_GET_ITEM(v, 0), PyList_GET_ITEM(v, 1),
                                                 PyList_GET_ITEM(v, 2), PyList_GET_ITEM(v, 3), h4, h5,
                                                 PyList_GET_ITEM(v, 6))
                                 : NULL;
            if (fresh == NULL) {
                if (h5 == NULL) Py_XDECREF(h4);
                return NULL;
            }
            int rc = PyDict_SetItem(hours, key, fresh);
            Py_DECREF(fresh);
            if (rc < 0) return NULL;
            continue;
        }
        if (check_list(c, 6, "an hour aggregate") < 0) return NULL;
        for (Py_ssize_t i = 0; i < 4; i++)
            if (list_op(c, v, i, PyNumber_Add) < 0) return NULL;
        if (hist_merge(PyList_GET_ITEM(c, 4), PyList_GET_ITEM(v, 4)) < 0) return NULL;
        int more_clock = PyObject_IsTrue(PyList_GET_ITEM(v, 5));
        if (more_clock < 0) return NULL;
        if (more_clock && hist_merge(PyList_GET_ITEM(c, 5), PyList_GET_ITEM(v, 5)) < 0) return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *configure(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *edges_obj, *ladder_obj, *internal;
    if (!PyArg_ParseTuple(args, "OOU", &edges_obj, &ladder_obj, &internal)) return NULL;
    PyObject *ef = PySequence_Fast(edges_obj, "configure: edges is not a sequence");
    if (ef == NULL) return NULL;
    PyObject *lf = PySequence_Fast(ladder_obj, "configure: ladder is not a sequence");
    if (lf == NULL) {
        Py_DECREF(ef);
        return NULL;
    }
    Py_ssize_t ne = PySequence_Fast_GET_SIZE(ef), nl = PySequence_Fast_GET_SIZE(lf);
    int64_t *e = NULL;
    uint64_t *l = NULL;
    if (ne < 1 || nl < 1) {
        PyErr_SetString(PyExc_ValueError, "configure: edges and ladder must not be empty");
        goto fail;
    }
    e = PyMem_Malloc((size_t)ne * sizeof *e);
    l = PyMem_Malloc((size_t)nl * sizeof *l);
    if (e == NULL || l == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < ne; i++)
        if (as_i64(PySequence_Fast_GET_ITEM(ef, i), &e[i]) < 0) goto fail;
    for (Py_ssize_t i = 0; i < nl; i++) {
        int64_t v;
        if (as_i64(PySequence_Fast_GET_ITEM(lf, i), &v) < 0) goto fail;
        if (v <= 0) {
            PyErr_SetString(PyExc_ValueError, "configure: ladder steps must be positive");
            goto fail;
        }
        l[i] = (uint64_t)v;
    }
    for (Py_ssize_t i = 1; i < ne; i++)
        if (e[i] < e[i - 1]) {
            PyErr_SetString(PyExc_ValueError, "configure: edges must be sorted");
            goto fail;
        }
    for (Py_ssize_t i = 1; i < nl; i++)
        if (l[i] < l[i - 1]) {
            PyErr_SetString(PyExc_ValueError, "configure: ladder must be sorted");
            goto fail;
        }
    Py_DECREF(ef);
    Py_DECREF(lf);
    PyMem_Free(edges);
    PyMem_Free(ladder);
    edges = e;
    n_edges = ne;
    ladder = l;
    n_ladder = nl;
    Py_INCREF(internal);
    Py_XSETREF(internal_kind, internal);
    Py_RETURN_NONE;
fail:
    PyMem_Free(e);
    PyMem_Free(l);
    Py_DECREF(ef);
    Py_DECREF(lf);
    return NULL;
}


/* ---- histogram blobs: collector.rollups._merged, compiled ---------------------------------------
 *
 * The writer's rollup flush writes every hour and day row a commit touched with its latency and
 * clock histograms: the stored blob (uint32 (bucket, count) pairs by bucket, collector.sla.histogram)
 * plus the new counts, encoded again. In Python that is a dict built from the blob, a sum, a sort and
 * an array: about a tenth of the writer's time in the ingest benchmark. Here it is one merge of two
 * sorted runs. Anything the Python path treats differently (a key or count that is not an int or does
 * not fit in 32 bits, a sum past 32 bits, a stored blob that is not whole pairs in increasing bucket
 * order) returns NotImplemented before anything is made, and the caller runs the Python path, which
 * gives its own answer or error.
 */

typedef struct {
    uint32_t bucket;
    uint64_t count;
} Pair;

static int cmp_pairs(const void *pa, const void *pb) {
    uint32_t a = ((const Pair *)pa)->bucket, b = ((const Pair *)pb)->bucket;
    return (a > b) - (a < b);
}

/* An int in [0, 2**32): 1; anything else: 0 (no exception left set). */
static int as_u32(PyObject *o, uint64_t *out) {
    if (!PyLong_Check(o)) return 0;
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (overflow || v < 0 || v > (long long)UINT32_MAX) return 0;
    *out = (uint64_t)v;
    return 1;
}

static PyObject *merged_blob(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *stored, *hist;
    if (!PyArg_ParseTuple(args, "OO!", &stored, &PyDict_Type, &hist)) return NULL;
    Py_ssize_t n = PyDict_GET_SIZE(hist);
    if (n == 0) { /* "if not hist: return stored" */
        Py_INCREF(stored);
        return stored;
    }
    const unsigned char *old = NULL;
    Py_ssize_t n_old = 0;
    if (stored != Py_None) {
        if (!PyBytes_CheckExact(stored)) Py_RETURN_NOTIMPLEMENTED;
        Py_ssize_t size = PyBytes_GET_SIZE(stored);
        if (size % 8) Py_RETURN_NOTIMPLEMENTED;
        old = (const unsigned char *)PyBytes_AS_STRING(stored);
        n_old = size / 8;
    }
    Pair *add = PyMem_Malloc(sizeof(Pair) * (size_t)n);
    Pair *out = PyMem_Malloc(sizeof(Pair) * (size_t)(n + n_old));
    if (add == NULL || out == NULL) {
        PyMem_Free(add);
        PyMem_Free(out);
        return PyErr_NoMemory();
    }
    PyObject *result = NULL;
    Py_ssize_t pos = 0, i = 0, m = 0;
    PyObject *k, *v;
    while (PyDict_Next(hist, &pos, &k, &v)) {
        uint64_t bucket, count;
        if (!as_u32(k, &bucket) || !as_u32(v, &count)) goto not_implemented;
        add[i].bucket = (uint32_t)bucket;
        add[i].count = count;
        i++;
    }
    qsort(add, (size_t)n, sizeof(Pair), cmp_pairs);
    Py_ssize_t a = 0, b = 0;
    int64_t last = -1;
    while (a < n_old || b < n) {
        uint32_t ob = 0, oc = 0;
        if (a < n_old) {
            memcpy(&ob, old + 8 * a, 4);
            memcpy(&oc, old + 8 * a + 4, 4);
            if ((int64_t)ob <= last) goto not_implemented; /* not increasing: dict semantics differ */
        }
        if (a < n_old && (b >= n || ob < add[b].bucket)) {
            out[m].bucket = ob;
            out[m].count = oc;
            last = ob;
            a++;
        } else if (a < n_old && ob == add[b].bucket) {
            out[m].bucket = ob;
            out[m].count = (uint64_t)oc + add[b].count;
            last = ob;
            a++;
            b++;
        } else {
            out[m] = add[b];
            b++;
        }
        if (out[m].count > UINT32_MAX) goto not_implemented;
        m++;
    }
    result = PyBytes_FromStringAndSize(NULL, 8 * m);
    if (result != NULL) {
        unsigned char *w = (unsigned char *)PyBytes_AS_STRING(result);
        for (Py_ssize_t j = 0; j < m; j++) {
            uint32_t pair[2] = {out[j].bucket, (uint32_t)out[j].count};
            memcpy(w + 8 * j, pair, 8);
        }
    }
    PyMem_Free(add);
    PyMem_Free(out);
    return result;
not_implemented:
    PyMem_Free(add);
    PyMem_Free(out);
    Py_RETURN_NOTIMPLEMENTED;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(edges, ladder, internal): latency edges, clock ladder, the internal error kind."},
    {"merge", merge, METH_VARARGS, "merge(slots, hours, more_slots, more_hours): collector.rollups.merge, compiled."},
    {"merged_blob", merged_blob, METH_VARARGS,
     "merged_blob(stored, hist): collector.rollups._merged, compiled (NotImplemented: run the Python one)."},
    {"fold", fold, METH_VARARGS,
     "fold(rows, pick, grids, slots, hours, grid, grid_end): collector.rollups.fold, compiled."},
    {"fold_columns", fold_columns, METH_VARARGS,
     "fold_columns(columns, grids, slots, hours, grid, grid_end): the fold of rows given as the nine "
     "picked columns (agent, check, t, dur, ok, deg, kind, off, sync)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rollups", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__rollups(void) { return PyModule_Create(&module); }
