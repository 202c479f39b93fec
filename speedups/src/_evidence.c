/* slaprobe_speedups._evidence: an evidence bundle's result lines, rendered in C.
 *
 * The twin of collector.evidence.records.TableWriter.add_view (its reference): a result record's
 * bytes are read straight from the protobuf wire format, and its results.csv line, its
 * records.jsonl line and (for verify) its collector ``results`` row are produced byte for byte
 * as the Python code produces them. Only a strict, plain subset of the wire format is read
 * here: every known field with its own wire type, each scalar at most once, no unknown field,
 * valid UTF-8, no repeated phase name, at most 32 phases and 64 fields entries, fields entries
 * whose rendering the Python side has cached. Anything else (or any doubt) is answered None
 * *before* anything is written, and the caller renders the record in Python: whatever the C
 * code accepts, upb parses to the same values, and the Python path stays the only judge of
 * every odd record. Everything read is bounds-checked; agents' bytes are untrusted.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define MAX_PHASES 32
#define MAX_ENTRIES 64
#define MAX_DETAIL_CHARS 4096
#define MAX_FIELD_KEY_CHARS 64
#define MAX_DURATION_NS (24LL * 3600LL * 1000000000LL)
#define FLUSH_AT (1 << 20)
#define CACHE_MAX 10000

/* ---- growable byte buffers ------------------------------------------------------------------ */

typedef struct {
    char *p;
    Py_ssize_t n, cap;
} Buf;

static int buf_reserve(Buf *b, Py_ssize_t more) {
    if (b->n + more <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : (1 << 16);
    while (cap < b->n + more) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        cap *= 2;
    }
    char *p = PyMem_Realloc(b->p, (size_t)cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline int put(Buf *b, const char *s, Py_ssize_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->p + b->n, s, (size_t)n);
    b->n += n;
    return 0;
}

static inline int putc_(Buf *b, char c) {
    if (buf_reserve(b, 1) < 0) return -1;
    b->p[b->n++] = c;
    return 0;
}

static inline int put_u64(Buf *b, uint64_t v) {
    char tmp[24], *e = tmp + sizeof tmp, *p = e;
    do {
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return put(b, p, e - p);
}

static inline int put_i64(Buf *b, int64_t v) {
    if (v >= 0) return put_u64(b, (uint64_t)v);
    if (putc_(b, '-') < 0) return -1;
    return put_u64(b, (uint64_t)0 - (uint64_t)v);
}

/* ns / 1e6 as f"{ns / 1e6:.3f}" writes it (the double's exact value, rounded half to even).
 * Where |ns| < 2**50 and ns is not an odd multiple of 500, the double is within 1.3e-4 of
 * ns/1000 units of 0.001 and that is at least 1e-3 from a tie: the text follows from the integer
 * alone. Otherwise Python's own formatter writes it. */
static int put_ms(Buf *b, int64_t ns) {
    uint64_t a = ns < 0 ? (uint64_t)0 - (uint64_t)ns : (uint64_t)ns;
    if (a < ((uint64_t)1 << 50) && a % 1000 != 500) {
        uint64_t k = a / 1000 + (a % 1000 > 500);
        if (ns < 0 && putc_(b, '-') < 0) return -1;
        if (put_u64(b, k / 1000) < 0 || buf_reserve(b, 4) < 0) return -1;
        char *o = b->p + b->n;
        unsigned f = (unsigned)(k % 1000);
        o[0] = '.';
        o[1] = (char)('0' + f / 100);
        o[2] = (char)('0' + f / 10 % 10);
        o[3] = (char)('0' + f % 10);
        b->n += 4;
        return 0;
    }
    char *s = PyOS_double_to_string((double)ns / 1e6, 'f', 3, 0, NULL);
    if (s == NULL) return -1;
    int r = put(b, s, (Py_ssize_t)strlen(s));
    PyMem_Free(s);
    return r;
}

/* json.encoder.encode_basestring of valid UTF-8 text (ensure_ascii=False), quotes included. */
static int put_json(Buf *b, const unsigned char *s, Py_ssize_t n) {
    static const char hex[] = "0123456789abcdef";
    if (buf_reserve(b, 2 + 6 * n) < 0) return -1;
    char *o = b->p + b->n;
    *o++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c == '"') {
            *o++ = '\\';
            *o++ = '"';
        } else if (c == '\\') {
            *o++ = '\\';
            *o++ = '\\';
        } else if (c >= 0x20) {
            *o++ = (char)c;
        } else {
            *o++ = '\\';
            switch (c) {
            case '\b': *o++ = 'b'; break;
            case '\f': *o++ = 'f'; break;
            case '\n': *o++ = 'n'; break;
            case '\r': *o++ = 'r'; break;
            case '\t': *o++ = 't'; break;
            default:
                *o++ = 'u';
                *o++ = '0';
                *o++ = '0';
                *o++ = hex[c >> 4];
                *o++ = hex[c & 0xf];
            }
        }
    }
    *o++ = '"';
    b->n = o - b->p;
    return 0;
}

/* A CSV cell as csv.writer (default dialect, "\n" line ends) writes it: quoted, with quotes
 * doubled, when it holds a comma, a quote or a newline (Python 3.11's rule; tests hold it). */
static int put_csv(Buf *b, const unsigned char *s, Py_ssize_t n) {
    int quote = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c == ',' || c == '"' || c == '\n') {
            quote = 1;
            break;
        }
    }
    if (!quote) return put(b, (const char *)s, n);
    if (buf_reserve(b, 2 + 2 * n) < 0) return -1;
    char *o = b->p + b->n;
    *o++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        if (s[i] == '"') *o++ = '"';
        *o++ = (char)s[i];
    }
    *o++ = '"';
    b->n = o - b->p;
    return 0;
}

/* ---- UTF-8 (strict: what Python's decoder and upb accept) ------------------------------------ */

/* Code points of valid UTF-8, or -1. */
static Py_ssize_t utf8_chars(const unsigned char *s, Py_ssize_t n) {
    Py_ssize_t i = 0, chars = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
        } else if (c >= 0xC2 && c <= 0xDF) {
            if (i + 1 >= n || (s[i + 1] & 0xC0) != 0x80) return -1;
            i += 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            if (i + 2 >= n || (s[i + 1] & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80) return -1;
            if (c == 0xE0 && s[i + 1] < 0xA0) return -1;  /* overlong */
            if (c == 0xED && s[i + 1] >= 0xA0) return -1; /* surrogate */
            i += 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            if (i + 3 >= n || (s[i + 1] & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80 ||
                (s[i + 3] & 0xC0) != 0x80)
                return -1;
            if (c == 0xF0 && s[i + 1] < 0x90) return -1; /* overlong */
            if (c == 0xF4 && s[i + 1] >= 0x90) return -1; /* beyond U+10FFFF */
            i += 4;
        } else {
            return -1;
        }
        chars++;
    }
    return chars;
}

/* ---- the wire format: a strict subset ------------------------------------------------------- */

typedef struct {
    const unsigned char *p;
    Py_ssize_t n;
} Str;

/* A varint of at most 10 bytes whose value fits 64 bits; 0, or -1 for anything else. */
static inline int varint(const unsigned char **pp, const unsigned char *end, uint64_t *out) {
    const unsigned char *p = *pp;
    uint64_t v = 0;
    for (int i = 0; i < 10; i++) {
        if (p >= end) return -1;
        unsigned char c = *p++;
        if (i == 9 && c > 1) return -1;
        v |= (uint64_t)(c & 0x7F) << (7 * i);
        if (!(c & 0x80)) {
            *pp = p;
            *out = v;
            return 0;
        }
    }
    return -1;
}

/* A field's tag: number and wire type; -1 for a number out of range. */
static inline int tag(const unsigned char **pp, const unsigned char *end, uint32_t *num, int *wt) {
    uint64_t t;
    if (varint(pp, end, &t) < 0 || t > 0xFFFFFFFFu) return -1;
    *num = (uint32_t)(t >> 3);
    *wt = (int)(t & 7);
    return *num == 0 ? -1 : 0;
}

static inline int length(const unsigned char **pp, const unsigned char *end, Str *s) {
    uint64_t n;
    if (varint(pp, end, &n) < 0 || n > (uint64_t)(end - *pp)) return -1;
    s->p = *pp;
    s->n = (Py_ssize_t)n;
    *pp += n;
    return 0;
}

typedef struct {
    uint64_t seq;
    Str check, revision, error_kind, detail;
    int64_t scheduled, started, duration, offset;
    int ok, degraded, synced;
    int nphases;
    Str pname[MAX_PHASES];
    int64_t pdur[MAX_PHASES];
    int nentries;
    Str entry[MAX_ENTRIES];
    Py_ssize_t detail_chars;
    int ascii_names; /* every phase name ASCII without DEL */
} Result;

/* Read a bool; only 0 and 1 (canonical) are taken. */
static inline int read_bool(const unsigned char **pp, const unsigned char *end, int *out) {
    uint64_t v;
    if (varint(pp, end, &v) < 0 || v > 1) return -1;
    *out = (int)v;
    return 0;
}

static int parse_phase(Str body, Str *name, int64_t *dur) {
    const unsigned char *p = body.p, *end = body.p + body.n;
    int seen = 0;
    name->p = (const unsigned char *)"";
    name->n = 0;
    *dur = 0;
    while (p < end) {
        uint32_t num;
        int wt;
        uint64_t v;
        if (tag(&p, end, &num, &wt) < 0) return -1;
        if (num == 1 && wt == 2 && !(seen & 1)) {
            if (length(&p, end, name) < 0) return -1;
            seen |= 1;
        } else if (num == 2 && wt == 0 && !(seen & 2)) {
            if (varint(&p, end, &v) < 0) return -1;
            *dur = (int64_t)v;
            seen |= 2;
        } else {
            return -1;
        }
    }
    return 0;
}

/* 0: a plain result record read into r; -1: anything else (the caller's Python path decides). */
static int parse_record(const unsigned char *raw, Py_ssize_t n, Result *r) {
    const unsigned char *p = raw, *end = raw + n;
    Str body = {NULL, 0};
    int seen_seq = 0, seen_result = 0;
    r->seq = 0;
    while (p < end) {
        uint32_t num;
        int wt;
        if (tag(&p, end, &num, &wt) < 0) return -1;
        if (num == 1 && wt == 0 && !seen_seq) {
            if (varint(&p, end, &r->seq) < 0) return -1;
            seen_seq = 1;
        } else if (num == 2 && wt == 2 && !seen_result) {
            if (length(&p, end, &body) < 0) return -1;
            seen_result = 1;
        } else {
            return -1; /* another kind, a field twice, or an unknown one */
        }
    }
    if (!seen_result) return -1;
    static const unsigned char empty[1] = {0};
    Str none = {empty, 0};
    r->check = r->revision = r->error_kind = r->detail = none;
    r->scheduled = r->started = r->duration = r->offset = 0;
    r->ok = r->degraded = r->synced = 0;
    r->nphases = r->nentries = 0;
    uint32_t seen = 0;
    p = body.p;
    end = body.p + body.n;
    while (p < end) {
        uint32_t num;
        int wt;
        uint64_t v;
        if (tag(&p, end, &num, &wt) < 0) return -1;
        if (num == 0 || num > 13) return -1;
        if (num != 10 && num != 11) {
            if (seen & (1u << num)) return -1;
            seen |= 1u << num;
        }
        switch (num) {
        case 1: case 2: case 8: case 9: {
            if (wt != 2) return -1;
            Str s;
            if (length(&p, end, &s) < 0) return -1;
            if (num == 1) r->check = s;
            else if (num == 2) r->revision = s;
            else if (num == 8) r->error_kind = s;
            else r->detail = s;
            break;
        }
        case 3: case 4: case 5: case 12:
            if (wt != 0 || varint(&p, end, &v) < 0) return -1;
            if (num == 3) r->scheduled = (int64_t)v;
            else if (num == 4) r->started = (int64_t)v;
            else if (num == 5) r->duration = (int64_t)v;
            else r->offset = (int64_t)v;
            break;
        case 6: case 7: case 13:
            if (wt != 0) return -1;
            if (read_bool(&p, end, num == 6 ? &r->ok : num == 7 ? &r->degraded : &r->synced) < 0)
                return -1;
            break;
        case 10: {
            Str s;
            if (wt != 2 || r->nphases >= MAX_PHASES || length(&p, end, &s) < 0) return -1;
            if (parse_phase(s, &r->pname[r->nphases], &r->pdur[r->nphases]) < 0) return -1;
            r->nphases++;
            break;
        }
        case 11:
            if (wt != 2 || r->nentries >= MAX_ENTRIES || length(&p, end, &r->entry[r->nentries]) < 0)
                return -1;
            r->nentries++;
            break;
        default:
            return -1;
        }
    }
    if (utf8_chars(r->check.p, r->check.n) < 0 || utf8_chars(r->revision.p, r->revision.n) < 0 ||
        utf8_chars(r->error_kind.p, r->error_kind.n) < 0)
        return -1;
    r->detail_chars = utf8_chars(r->detail.p, r->detail.n);
    if (r->detail_chars < 0) return -1;
    r->ascii_names = 1;
    for (int i = 0; i < r->nphases; i++) {
        Str a = r->pname[i];
        for (Py_ssize_t k = 0; k < a.n; k++) {
            if (a.p[k] >= 0x7F) return -1; /* a name the row writes its own way: Python's */
        }
        for (int j = 0; j < i; j++) { /* a repeated name: Python's (a dict keeps the last) */
            if (r->pname[j].n == a.n && memcmp(r->pname[j].p, a.p, (size_t)a.n) == 0) return -1;
        }
    }
    return 0;
}

/* ---- utc(): the text of records.utc ---------------------------------------------------------- */

static void civil(int64_t days, int *y, unsigned *m, unsigned *d) {
    /* days since 1970-01-01 -> proleptic Gregorian date (H. Hinnant's algorithm) */
    days += 719468;
    int64_t era = (days >= 0 ? days : days - 146096) / 146097;
    unsigned doe = (unsigned)(days - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t yy = (int64_t)yoe + era * 400;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int)(yy + (*m <= 2));
}

/* ns > 0: "YYYY-MM-DDTHH:MM:SS.ffffffZ" into out (27 bytes); the same float and rounding as
 * records.utc. */
static int utc_text(int64_t ns, char *out) {
    double f = (double)ns / 1e9;
    int64_t sec = (int64_t)f;
    double us_f = nearbyint((f - (double)sec) * 1e6);
    int64_t us = (int64_t)us_f;
    if (us >= 1000000) {
        us -= 1000000;
        sec += 1;
    }
    int64_t days = sec / 86400, rem = sec % 86400;
    int y;
    unsigned m, d;
    civil(days, &y, &m, &d);
    if (y < 1 || y > 9999) return -1;
    unsigned hh = (unsigned)(rem / 3600), mm = (unsigned)(rem % 3600 / 60), ss = (unsigned)(rem % 60);
    unsigned u = (unsigned)us;
    char *o = out;
    o[0] = (char)('0' + y / 1000);
    o[1] = (char)('0' + y / 100 % 10);
    o[2] = (char)('0' + y / 10 % 10);
    o[3] = (char)('0' + y % 10);
    o[4] = '-';
    o[5] = (char)('0' + m / 10);
    o[6] = (char)('0' + m % 10);
    o[7] = '-';
    o[8] = (char)('0' + d / 10);
    o[9] = (char)('0' + d % 10);
    o[10] = 'T';
    o[11] = (char)('0' + hh / 10);
    o[12] = (char)('0' + hh % 10);
    o[13] = ':';
    o[14] = (char)('0' + mm / 10);
    o[15] = (char)('0' + mm % 10);
    o[16] = ':';
    o[17] = (char)('0' + ss / 10);
    o[18] = (char)('0' + ss % 10);
    o[19] = '.';
    for (int i = 25; i >= 20; i--) {
        o[i] = (char)('0' + u % 10);
        u /= 10;
    }
    o[26] = 'Z';
    return 27;
}

/* ---- the renderer ----------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *jsonl_write, *csv_write; /* the outputs' write methods (bytes) */
    PyObject *checks;                  /* the bundle's checks: a record of another is not rendered */
    PyObject *entries;                 /* dict: fields entries (tuple of bytes) -> (JSON text, row text) */
    PyObject *check_cache;             /* dict: check bytes -> (str, in checks) */
    int64_t start_ns, end_ns;
    Buf jsonl, csv;
    /* the last agent and epoch: their texts */
    PyObject *agent, *epoch;
    Buf agent_json, agent_csv, epoch_text;
    /* the last row sink: what RowSink holds */
    PyObject *sink, *sink_checks, *sink_rows, *agent_row;
    int64_t limit_ns;
    int slim; /* a successful result's row without the texts the report does not read */
    Py_ssize_t rendered;
    int64_t minute; /* the last minute written: its text */
    char minute_text[20];
} Renderer;

static void renderer_dealloc(Renderer *self) {
    Py_XDECREF(self->jsonl_write);
    Py_XDECREF(self->csv_write);
    Py_XDECREF(self->checks);
    Py_XDECREF(self->entries);
    Py_XDECREF(self->check_cache);
    Py_XDECREF(self->agent);
    Py_XDECREF(self->epoch);
    Py_XDECREF(self->sink);
    Py_XDECREF(self->sink_checks);
    Py_XDECREF(self->sink_rows);
    Py_XDECREF(self->agent_row);
    PyMem_Free(self->jsonl.p);
    PyMem_Free(self->csv.p);
    PyMem_Free(self->agent_json.p);
    PyMem_Free(self->agent_csv.p);
    PyMem_Free(self->epoch_text.p);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int renderer_init(Renderer *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"jsonl", "csv", "start_ns", "end_ns", "checks", "entries", NULL};
    PyObject *jsonl, *csv, *checks, *entries;
    long long start, end;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOLLOO!", kwlist, &jsonl, &csv, &start, &end, &checks,
                                     &PyDict_Type, &entries))
        return -1;
    PyObject *jw = PyObject_GetAttrString(jsonl, "write");
    if (jw == NULL) return -1;
    PyObject *cw = PyObject_GetAttrString(csv, "write");
    if (cw == NULL) {
        Py_DECREF(jw);
        return -1;
    }
    PyObject *cache = PyDict_New();
    if (cache == NULL) {
        Py_DECREF(jw);
        Py_DECREF(cw);
        return -1;
    }
    Py_XSETREF(self->jsonl_write, jw);
    Py_XSETREF(self->csv_write, cw);
    Py_INCREF(checks);
    Py_XSETREF(self->checks, checks);
    Py_INCREF(entries);
    Py_XSETREF(self->entries, entries);
    Py_XSETREF(self->check_cache, cache);
    self->start_ns = start;
    self->end_ns = end;
    self->minute = -1;
    return 0;
}

static int write_out(PyObject *write, Buf *b) {
    if (b->n == 0) return 0;
    PyObject *bytes = PyBytes_FromStringAndSize(b->p, b->n);
    if (bytes == NULL) return -1;
    b->n = 0;
    PyObject *r = PyObject_CallOneArg(write, bytes);
    Py_DECREF(bytes);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

static int flush_all(Renderer *self) {
    if (write_out(self->jsonl_write, &self->jsonl) < 0) return -1;
    return write_out(self->csv_write, &self->csv);
}

static PyObject *renderer_flush(Renderer *self, PyObject *unused) {
    (void)unused;
    if (flush_all(self) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *append_text(Renderer *self, PyObject *arg, Buf *b) {
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(arg, &n);
    if (s == NULL || put(b, s, n) < 0) return NULL;
    if ((self->jsonl.n >= FLUSH_AT || self->csv.n >= FLUSH_AT) && flush_all(self) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *renderer_jsonl(Renderer *self, PyObject *arg) { return append_text(self, arg, &self->jsonl); }

static PyObject *renderer_csv(Renderer *self, PyObject *arg) { return append_text(self, arg, &self->csv); }

static int set_agent(Renderer *self, PyObject *agent, PyObject *epoch) {
    if (agent != self->agent) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(agent, &n);
        if (s == NULL) return -1;
        self->agent_json.n = self->agent_csv.n = 0;
        if (put_json(&self->agent_json, (const unsigned char *)s, n) < 0 ||
            put_csv(&self->agent_csv, (const unsigned char *)s, n) < 0)
            return -1;
        Py_INCREF(agent);
        Py_XSETREF(self->agent, agent);
    }
    if (epoch != self->epoch) {
        PyObject *text = PyObject_Str(epoch);
        if (text == NULL) return -1;
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(text, &n);
        self->epoch_text.n = 0;
        int bad = s == NULL || put(&self->epoch_text, s, n) < 0;
        Py_DECREF(text);
        if (bad) return -1;
        Py_INCREF(epoch);
        Py_XSETREF(self->epoch, epoch);
    }
    return 0;
}

static int set_sink(Renderer *self, PyObject *sink) {
    if (sink == self->sink) return 0;
    PyObject *checks = PyObject_GetAttrString(sink, "checks");
    PyObject *rows = checks ? PyObject_GetAttrString(sink, "rows") : NULL;
    PyObject *agent_row = rows ? PyObject_GetAttrString(sink, "agent_row") : NULL;
    PyObject *limit = agent_row ? PyObject_GetAttrString(sink, "limit_ns") : NULL;
    long long lim = limit ? PyLong_AsLongLong(limit) : -1;
    Py_XDECREF(limit);
    PyObject *slim = limit ? PyObject_GetAttrString(sink, "slim") : NULL;
    int is_slim = slim ? PyObject_IsTrue(slim) : -1;
    Py_XDECREF(slim);
    if (limit == NULL || is_slim < 0 || (lim == -1 && PyErr_Occurred()) || !PyList_Check(rows)) {
        if (rows != NULL && !PyList_Check(rows) && !PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "sink.rows must be a list");
        Py_XDECREF(checks);
        Py_XDECREF(rows);
        Py_XDECREF(agent_row);
        return -1;
    }
    Py_INCREF(sink);
    Py_XSETREF(self->sink, sink);
    Py_XSETREF(self->sink_checks, checks);
    Py_XSETREF(self->sink_rows, rows);
    Py_XSETREF(self->agent_row, agent_row);
    self->limit_ns = lim;
    self->slim = is_slim;
    return 0;
}

/* (check as str, in the bundle's checks) of a check's bytes (valid UTF-8), cached: borrowed. */
static PyObject *check_info(Renderer *self, Str check) {
    PyObject *key = PyBytes_FromStringAndSize((const char *)check.p, check.n);
    if (key == NULL) return NULL;
    PyObject *got = PyDict_GetItemWithError(self->check_cache, key);
    if (got != NULL || PyErr_Occurred()) {
        Py_DECREF(key);
        return got;
    }
    PyObject *text = PyUnicode_DecodeUTF8((const char *)check.p, check.n, "strict");
    int in = text ? PySequence_Contains(self->checks, text) : -1;
    PyObject *info = in < 0 ? NULL : Py_BuildValue("(NO)", text, in ? Py_True : Py_False);
    if (in < 0) Py_XDECREF(text);
    if (info == NULL) {
        Py_DECREF(key);
        return NULL;
    }
    if (PyDict_GET_SIZE(self->check_cache) >= CACHE_MAX) PyDict_Clear(self->check_cache);
    int bad = PyDict_SetItem(self->check_cache, key, info);
    Py_DECREF(key);
    Py_DECREF(info); /* the dict holds it */
    return bad ? NULL : info;
}

static PyObject *decode(Str s) { return PyUnicode_DecodeUTF8((const char *)s.p, s.n, "strict"); }

/* Render one record (its bytes): 1 rendered (its seq in *seq_out), 0 left to Python (nothing
 * written), -1 an error raised. ``strict`` (a walk of a run of records): leave to Python also a
 * record whose seq is not ``expect``, one in ``listed``, or one with a sink whose row the ingest
 * would have refused: verify's walk judges those. */
static int render_one(Renderer *self, const unsigned char *raw, Py_ssize_t raw_n, PyObject *agent,
                      PyObject *epoch, PyObject *sink, int strict, uint64_t expect, PyObject *listed,
                      uint64_t *seq_out) {
    Result r;
    if (parse_record(raw, raw_n, &r) < 0) return 0;
    if (strict) {
        if (r.seq != expect) return 0;
        if (listed != NULL && listed != Py_None && !(PyDict_Check(listed) && PyDict_GET_SIZE(listed) == 0)) {
            PyObject *k = PyLong_FromUnsignedLongLong(r.seq);
            int in = k ? PySequence_Contains(listed, k) : -1;
            Py_XDECREF(k);
            if (in < 0) return -1;
            if (in) return 0;
        }
    }
    *seq_out = r.seq;
    PyObject *info = check_info(self, r.check); /* borrowed from the cache: held while here */
    if (info == NULL) return -1;
    Py_INCREF(info);
    int out = -1;
    PyObject *hold = NULL;
    Buf ph = {NULL, 0, 0};
    int render = self->start_ns <= r.scheduled && r.scheduled < self->end_ns &&
                 PyTuple_GET_ITEM(info, 1) == Py_True;
    int with_rows = sink != Py_None;
    if (!render && !with_rows) {
        out = 1;
        goto done;
    }
    if (render && r.scheduled <= 0) goto python; /* utc()'s other path: Python's */
    /* The fields: their texts cached by the Python side, by the entries' exact bytes. */
    const char *field_text = "{}";
    Py_ssize_t field_n = 2;
    PyObject *field_row = NULL; /* borrowed from hold; NULL: "{}" */
    int field_ok = 1;
    if (r.nentries) {
        PyObject *key = PyTuple_New(r.nentries);
        if (key == NULL) goto done;
        for (int i = 0; i < r.nentries; i++) {
            PyObject *e = PyBytes_FromStringAndSize((const char *)r.entry[i].p, r.entry[i].n);
            if (e == NULL) {
                Py_DECREF(key);
                goto done;
            }
            PyTuple_SET_ITEM(key, i, e);
        }
        PyObject *got = PyDict_GetItemWithError(self->entries, key);
        Py_DECREF(key);
        if (got == NULL) {
            if (PyErr_Occurred()) goto done;
            goto python; /* not seen yet: Python renders it, and caches it */
        }
        if (!PyTuple_Check(got) || PyTuple_GET_SIZE(got) != 2 || !PyUnicode_Check(PyTuple_GET_ITEM(got, 0)))
            goto python;
        hold = got;
        Py_INCREF(hold);
        field_text = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(got, 0), &field_n);
        if (field_text == NULL) goto done;
        field_row = PyTuple_GET_ITEM(got, 1);
        if (field_row == Py_None) {
            field_ok = 0;
            field_row = NULL;
        } else if (!PyUnicode_Check(field_row)) {
            goto python;
        }
    }
    if (set_agent(self, agent, epoch) < 0) goto done;
    /* The phases' text: {"name":duration,...} in order (names unique, ASCII). */
    if (r.nphases) {
        if (putc_(&ph, '{') < 0) goto done;
        for (int i = 0; i < r.nphases; i++) {
            if ((i && putc_(&ph, ',') < 0) || put_json(&ph, r.pname[i].p, r.pname[i].n) < 0 ||
                putc_(&ph, ':') < 0 || put_i64(&ph, r.pdur[i]) < 0)
                goto done;
        }
        if (putc_(&ph, '}') < 0) goto done;
    } else if (put(&ph, "{}", 2) < 0) {
        goto done;
    }
    if (with_rows) {
        if (set_sink(self, sink) < 0) goto done;
        PyObject *check_str = PyTuple_GET_ITEM(info, 0);
        PyObject *check_row;
        if (PyDict_CheckExact(self->sink_checks)) {
            check_row = PyDict_GetItemWithError(self->sink_checks, check_str);
            Py_XINCREF(check_row);
        } else {
            check_row = PyObject_CallMethod(self->sink_checks, "get", "O", check_str);
            if (check_row == Py_None) Py_CLEAR(check_row);
        }
        if (check_row == NULL && PyErr_Occurred()) goto done;
        int phases_ok = 1;
        for (int i = 0; i < r.nphases; i++) {
            if (r.pname[i].n == 0 || r.pname[i].n > MAX_FIELD_KEY_CHARS || r.pdur[i] < 0 ||
                r.pdur[i] > MAX_DURATION_NS)
                phases_ok = 0;
        }
        int valid = check_row != NULL && 0 < r.scheduled && r.scheduled <= self->limit_ns && 0 < r.started &&
                    r.started <= self->limit_ns && 0 <= r.duration && r.duration <= MAX_DURATION_NS &&
                    r.ok != (r.error_kind.n > 0) && r.detail_chars <= MAX_DETAIL_CHARS && field_ok &&
                    memchr(r.detail.p, 0, (size_t)r.detail.n) == NULL &&
                    memchr(r.error_kind.p, 0, (size_t)r.error_kind.n) == NULL && phases_ok;
        if (!valid) {
            Py_XDECREF(check_row);
            if (strict) goto python;
        } else {
            PyObject *row = PyTuple_New(17);
            if (row == NULL) {
                Py_DECREF(check_row);
                goto done;
            }
            Py_INCREF(self->agent_row);
            PyTuple_SET_ITEM(row, 0, self->agent_row);
            Py_INCREF(epoch);
            PyTuple_SET_ITEM(row, 1, epoch);
            PyTuple_SET_ITEM(row, 2, PyLong_FromUnsignedLongLong(r.seq));
            PyTuple_SET_ITEM(row, 3, check_row);
            int slim = self->slim && r.ok;
            Str revision = r.revision, detail = r.detail;
            if (slim) revision.n = detail.n = 0;
            PyTuple_SET_ITEM(row, 4, decode(revision));
            PyTuple_SET_ITEM(row, 5, PyLong_FromLongLong(r.scheduled));
            PyTuple_SET_ITEM(row, 6, PyLong_FromLongLong(r.started));
            PyTuple_SET_ITEM(row, 7, PyLong_FromLongLong(r.duration));
            PyTuple_SET_ITEM(row, 8, PyLong_FromLong(r.ok));
            PyTuple_SET_ITEM(row, 9, PyLong_FromLong(r.degraded));
            PyTuple_SET_ITEM(row, 10, decode(r.error_kind));
            PyTuple_SET_ITEM(row, 11, decode(detail));
            PyTuple_SET_ITEM(row, 12, slim ? PyUnicode_FromStringAndSize("{}", 2)
                                           : PyUnicode_DecodeUTF8(ph.p, ph.n, "strict"));
            if (slim) field_row = NULL;
            Py_XINCREF(field_row);
            PyTuple_SET_ITEM(row, 13, field_row != NULL ? field_row : PyUnicode_FromStringAndSize("{}", 2));
            PyTuple_SET_ITEM(row, 14, PyLong_FromLong(0));
            PyTuple_SET_ITEM(row, 15, PyLong_FromLongLong(r.offset));
            PyTuple_SET_ITEM(row, 16, PyLong_FromLong(r.synced));
            int bad = 0;
            for (int i = 0; i < 17; i++) bad |= PyTuple_GET_ITEM(row, i) == NULL;
            bad = bad || PyList_Append(self->sink_rows, row) < 0;
            Py_DECREF(row);
            if (bad) goto done;
        }
    }
    if (render) {
        Buf *j = &self->jsonl, *c = &self->csv;
        char when[32];
        int wn = utc_text(r.scheduled, when);
        if (wn < 0) {
            PyErr_SetString(PyExc_ValueError, "time out of range"); /* not reached for int64 ns */
            goto done;
        }
        if (put(j, "[\"result\",", 10) < 0 || put(j, self->agent_json.p, self->agent_json.n) < 0 ||
            putc_(j, ',') < 0 || put(j, self->epoch_text.p, self->epoch_text.n) < 0 || putc_(j, ',') < 0 ||
            put_u64(j, r.seq) < 0 || putc_(j, ',') < 0 || put_json(j, r.check.p, r.check.n) < 0 ||
            putc_(j, ',') < 0 || put_json(j, r.revision.p, r.revision.n) < 0 || putc_(j, ',') < 0 ||
            put_i64(j, r.scheduled) < 0 || putc_(j, ',') < 0 || put_i64(j, r.started) < 0 ||
            putc_(j, ',') < 0 || put_i64(j, r.duration) < 0 ||
            put(j, r.ok ? ",true," : ",false,", r.ok ? 6 : 7) < 0 ||
            put(j, r.degraded ? "true," : "false,", r.degraded ? 5 : 6) < 0 ||
            put_json(j, r.error_kind.p, r.error_kind.n) < 0 || putc_(j, ',') < 0 ||
            put_json(j, r.detail.p, r.detail.n) < 0 || putc_(j, ',') < 0 || put(j, ph.p, ph.n) < 0 ||
            putc_(j, ',') < 0 || put(j, field_text, field_n) < 0 || putc_(j, ',') < 0 ||
            put_i64(j, r.offset) < 0 || put(j, r.synced ? ",true]\n" : ",false]\n", r.synced ? 7 : 8) < 0)
            goto done;
        if (put(c, when, wn) < 0 || putc_(c, ',') < 0 || put_csv(c, r.check.p, r.check.n) < 0 ||
            putc_(c, ',') < 0 || put(c, self->agent_csv.p, self->agent_csv.n) < 0 ||
            put(c, r.ok ? ",up," : ",down,", r.ok ? 4 : 6) < 0 ||
            put(c, r.degraded ? "yes," : ",", r.degraded ? 4 : 1) < 0 ||
            put_csv(c, r.error_kind.p, r.error_kind.n) < 0 || putc_(c, ',') < 0 || put_ms(c, r.duration) < 0 ||
            putc_(c, ',') < 0 || put_csv(c, r.detail.p, r.detail.n) < 0 || putc_(c, ',') < 0 ||
            put(c, self->epoch_text.p, self->epoch_text.n) < 0 || putc_(c, ',') < 0 || put_u64(c, r.seq) < 0 ||
            putc_(c, ',') < 0 || put_ms(c, r.offset) < 0 || putc_(c, '\n') < 0)
            goto done;
        self->rendered++;
        if ((j->n >= FLUSH_AT || c->n >= FLUSH_AT) && flush_all(self) < 0) goto done;
    }
    out = 1;
    goto done;
python:
    out = 0;
done:
    PyMem_Free(ph.p);
    Py_XDECREF(hold);
    Py_DECREF(info);
    return out;
}

/* result(raw, agent, epoch, sink) -> seq, or None: render a result record's lines (and, with a
 * sink, append its row when the ingest would have stored one), or leave it to Python. */
static PyObject *renderer_result(Renderer *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "result(raw, agent, epoch, sink)");
        return NULL;
    }
    PyObject *raw = args[0], *agent = args[1], *epoch = args[2], *sink = args[3];
    if (!PyBytes_Check(raw) || !PyUnicode_Check(agent) || !PyLong_Check(epoch)) {
        PyErr_SetString(PyExc_TypeError, "result(raw: bytes, agent: str, epoch: int, sink)");
        return NULL;
    }
    uint64_t seq = 0;
    int got = render_one(self, (const unsigned char *)PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), agent,
                         epoch, sink, 0, 0, NULL, &seq);
    if (got < 0) return NULL;
    if (got == 0) Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(seq);
}

/* ---- seals: ChainWalker.seal's checks for a plain link --------------------------------------- */

typedef struct {
    uint64_t seq;
    Str body, signature;
} Seal;

typedef struct {
    uint64_t epoch, first_seq, last_seq, count;
    Str prev, digest, key_id, replaces_head;
} SealBody;

/* A seal record {1: seq, 5: {1: body, 2: signature}}, each field once, nothing else: 0; else -1. */
static int parse_seal(const unsigned char *raw, Py_ssize_t n, Seal *out) {
    const unsigned char *p = raw, *end = raw + n;
    int seen = 0;
    Str seal = {NULL, 0};
    out->seq = 0;
    while (p < end) {
        uint32_t num;
        int wt;
        if (tag(&p, end, &num, &wt) < 0) return -1;
        if (num == 1 && wt == 0 && !(seen & 1)) {
            if (varint(&p, end, &out->seq) < 0) return -1;
            seen |= 1;
        } else if (num == 5 && wt == 2 && !(seen & 2)) {
            if (length(&p, end, &seal) < 0) return -1;
            seen |= 2;
        } else {
            return -1;
        }
    }
    if (!(seen & 2)) return -1;
    static const unsigned char empty[1] = {0};
    out->body.p = out->signature.p = empty;
    out->body.n = out->signature.n = 0;
    seen = 0;
    p = seal.p;
    end = seal.p + seal.n;
    while (p < end) {
        uint32_t num;
        int wt;
        if (tag(&p, end, &num, &wt) < 0 || wt != 2 || (num != 1 && num != 2) || (seen & (1 << num))) return -1;
        seen |= 1 << num;
        if (length(&p, end, num == 1 ? &out->body : &out->signature) < 0) return -1;
    }
    return 0;
}

/* SealBody, each field with its wire type at most once, nothing unknown: 0; else -1. */
static int parse_seal_body(Str body, SealBody *b) {
    static const unsigned char empty[1] = {0};
    Str none = {empty, 0};
    b->epoch = b->first_seq = b->last_seq = b->count = 0;
    b->prev = b->digest = b->key_id = b->replaces_head = none;
    const unsigned char *p = body.p, *end = body.p + body.n;
    uint32_t seen = 0;
    while (p < end) {
        uint32_t num;
        int wt;
        uint64_t v;
        if (tag(&p, end, &num, &wt) < 0 || num > 10 || (seen & (1u << num))) return -1;
        seen |= 1u << num;
        switch (num) {
        case 1: case 2: case 3: case 6: case 7: case 10:
            if (wt != 0 || varint(&p, end, &v) < 0) return -1;
            if (num == 1) b->epoch = v;
            else if (num == 2) b->first_seq = v;
            else if (num == 3) b->last_seq = v;
            else if (num == 7) b->count = v;
            else if (num == 10 && v > 0xFFFFFFFFu) return -1; /* uint32: upb would keep the low bits */
            break;
        case 4: case 5: case 8: case 9: {
            Str s;
            if (wt != 2 || length(&p, end, &s) < 0) return -1;
            if (num == 4) b->prev = s;
            else if (num == 5) b->digest = s;
            else if (num == 8) b->key_id = s;
            else b->replaces_head = s;
            break;
        }
        default:
            return -1;
        }
    }
    return 0;
}

static PyObject *digest_of(PyObject *h) { return PyObject_CallMethod(h, "digest", NULL); }

/* Feed buf[a:b] to the hashlib object h. */
static int feed(PyObject *h, const unsigned char *buf, Py_ssize_t a, Py_ssize_t b) {
    if (b <= a) return 0;
    PyObject *mv = PyMemoryView_FromMemory((char *)(buf + a), b - a, PyBUF_READ);
    if (mv == NULL) return -1;
    PyObject *r = PyObject_CallMethod(h, "update", "O", mv);
    Py_DECREF(mv);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

/* run(buf, pos, last, agent, epoch, sink, next_seq, listed, max_rows, chain, sha256) ->
 * (pos, records, last seq, links, last link's offset):
 * render the chain file's records framed in ``buf`` from byte ``pos`` (a 4-byte big-endian length
 * and the record), for as long as each is a plain result with the next seq (not listed, its
 * row accepted), starting at or before byte ``last``, complete in ``buf``, and the sink holds
 * fewer than ``max_rows`` rows. With ``chain`` (a list: [epoch, keys, head, segment start,
 * digest object, records in it, first], ChainWalker's state, updated in place), also walk the
 * plain seals (no eviction, each check of ChainWalker.seal holding: the signatures are the
 * caller's, at the eviction and last links): the records' bytes go to the digest object, a
 * seal's digest is compared, a new one started. Returns where it stopped: the caller walks that
 * record (a seal whose check fails: the caller's walk names it). */
static PyObject *renderer_run(Renderer *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError,
                        "run(buf, pos, last, agent, epoch, sink, next_seq, listed, max_rows, chain, sha256)");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t last = PyLong_AsSsize_t(args[2]);
    if (last == -1 && PyErr_Occurred()) return NULL;
    PyObject *agent = args[3], *epoch = args[4], *sink = args[5], *listed = args[7], *chain = args[9],
             *sha256 = args[10];
    unsigned long long expect = PyLong_AsUnsignedLongLong(args[6]);
    if (expect == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    Py_ssize_t max_rows = PyLong_AsSsize_t(args[8]);
    if (max_rows == -1 && PyErr_Occurred()) return NULL;
    if (!PyUnicode_Check(agent) || !PyLong_Check(epoch)) {
        PyErr_SetString(PyExc_TypeError, "run(): agent must be a str and epoch an int");
        return NULL;
    }
    /* The chain walker's state, when seals are walked here too. */
    int seals = 0, first = 0;
    unsigned long long chain_epoch = 0, seg_start = 0;
    long long count = 0;
    PyObject *keys = NULL, *head = NULL, *h = NULL; /* owned while here */
    if (chain != Py_None) {
        if (!PyList_Check(chain) || PyList_GET_SIZE(chain) != 7) {
            PyErr_SetString(PyExc_TypeError, "run(): chain must be a list of 7");
            return NULL;
        }
        chain_epoch = PyLong_AsUnsignedLongLong(PyList_GET_ITEM(chain, 0));
        seg_start = chain_epoch == (unsigned long long)-1 && PyErr_Occurred()
                        ? 0
                        : PyLong_AsUnsignedLongLong(PyList_GET_ITEM(chain, 3));
        count = PyErr_Occurred() ? 0 : PyLong_AsLongLong(PyList_GET_ITEM(chain, 5));
        first = PyObject_IsTrue(PyList_GET_ITEM(chain, 6));
        if (PyErr_Occurred() || first < 0) {
            PyErr_Clear(); /* out of range: the seals are the caller's */
        } else if (PyDict_Check(PyList_GET_ITEM(chain, 1)) &&
                   (PyList_GET_ITEM(chain, 2) == Py_None || PyBytes_Check(PyList_GET_ITEM(chain, 2)))) {
            seals = 1;
            keys = Py_NewRef(PyList_GET_ITEM(chain, 1));
            head = Py_NewRef(PyList_GET_ITEM(chain, 2));
            h = Py_NewRef(PyList_GET_ITEM(chain, 4));
        }
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        Py_XDECREF(keys);
        Py_XDECREF(head);
        Py_XDECREF(h);
        return NULL;
    }
    const unsigned char *buf = view.buf;
    Py_ssize_t size = view.len, records = 0, links = 0, link_at = -1, start = pos;
    Py_ssize_t fed = pos; /* the digest holds the records before this offset */
    uint64_t seq = 0, last_seq = 0;
    PyObject *rows = NULL, *out = NULL;
    if (sink != Py_None) {
        if (set_sink(self, sink) < 0) goto end;
        rows = self->sink_rows;
    }
    while (pos >= 0 && pos <= last && size - pos >= 4) {
        if (rows != NULL && PyList_GET_SIZE(rows) >= max_rows) break;
        Py_ssize_t n = (Py_ssize_t)((uint32_t)buf[pos] << 24 | (uint32_t)buf[pos + 1] << 16 |
                                    (uint32_t)buf[pos + 2] << 8 | (uint32_t)buf[pos + 3]);
        if (n > size - pos - 4) break; /* cut: the caller names it */
        int got = render_one(self, buf + pos + 4, n, agent, epoch, sink, 1, (uint64_t)expect, listed, &seq);
        if (got < 0) goto end;
        if (got == 0) {
            /* Not a plain result: a plain seal that holds is walked here, anything else is not. */
            Seal sl;
            SealBody b;
            if (!seals || (first && pos == start) || parse_seal(buf + pos + 4, n, &sl) < 0 ||
                sl.seq != expect || parse_seal_body(sl.body, &b) < 0 || b.replaces_head.n != 0 ||
                b.epoch != chain_epoch || b.first_seq != seg_start || sl.seq == 0 || b.last_seq != sl.seq - 1 ||
                b.count != (uint64_t)count)
                break;
            if (feed(h, buf, fed, pos) < 0) goto end;
            fed = pos;
            PyObject *d = digest_of(h);
            if (d == NULL) goto end;
            int same = PyBytes_Check(d) && PyBytes_GET_SIZE(d) == b.digest.n &&
                       memcmp(PyBytes_AS_STRING(d), b.digest.p, (size_t)b.digest.n) == 0;
            Py_DECREF(d);
            if (!same) break;
            if (head != Py_None && (PyBytes_GET_SIZE(head) != b.prev.n ||
                                    memcmp(PyBytes_AS_STRING(head), b.prev.p, (size_t)b.prev.n) != 0))
                break;
            PyObject *kid = PyBytes_FromStringAndSize((const char *)b.key_id.p, b.key_id.n);
            if (kid == NULL) goto end;
            PyObject *key = PyDict_GetItemWithError(keys, kid);
            Py_DECREF(kid);
            if (key == NULL) {
                if (PyErr_Occurred()) goto end;
                break;
            }
            /* It holds: the head is the body's hash, a new digest starts after it. */
            PyObject *bh = PyObject_CallFunction(sha256, "y#", (const char *)sl.body.p, sl.body.n);
            PyObject *new_head = bh ? digest_of(bh) : NULL;
            Py_XDECREF(bh);
            PyObject *new_h = new_head ? PyObject_CallNoArgs(sha256) : NULL;
            if (new_h == NULL || !PyBytes_Check(new_head)) {
                Py_XDECREF(new_head);
                Py_XDECREF(new_h);
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "sha256().digest() is not bytes");
                goto end;
            }
            Py_SETREF(head, new_head);
            Py_SETREF(h, new_h);
            count = 0;
            links++;
            link_at = pos;
            last_seq = sl.seq;
            seg_start = sl.seq + 1;
            pos += 4 + n;
            fed = pos;
            if (sl.seq == UINT64_MAX) break;
            expect = sl.seq + 1;
            continue;
        }
        records++;
        count++;
        last_seq = seq;
        pos += 4 + n;
        if (seq == UINT64_MAX) break; /* no next seq in 64 bits: the caller's walk says so */
        expect = seq + 1;
    }
    if (seals) {
        if (feed(h, buf, fed, pos) < 0) goto end;
        PyObject *v3 = PyLong_FromUnsignedLongLong(seg_start), *v5 = PyLong_FromLongLong(count);
        if (v3 == NULL || v5 == NULL) {
            Py_XDECREF(v3);
            Py_XDECREF(v5);
            goto end;
        }
        PyList_SetItem(chain, 2, Py_NewRef(head));
        PyList_SetItem(chain, 3, v3);
        PyList_SetItem(chain, 4, Py_NewRef(h));
        PyList_SetItem(chain, 5, v5);
    }
    out = Py_BuildValue("(nnKnn)", pos, records, (unsigned long long)last_seq, links, link_at);
end:
    PyBuffer_Release(&view);
    Py_XDECREF(keys);
    Py_XDECREF(head);
    Py_XDECREF(h);
    return out;
}

static PyObject *renderer_get_rendered(Renderer *self, void *closure) {
    (void)closure;
    return PyLong_FromSsize_t(self->rendered);
}

static PyMethodDef renderer_methods[] = {
    {"result", (PyCFunction)(void (*)(void))renderer_result, METH_FASTCALL,
     "result(raw, agent, epoch, sink) -> seq, or None: the record is Python's to render."},
    {"run", (PyCFunction)(void (*)(void))renderer_run, METH_FASTCALL,
     "run(buf, pos, last, agent, epoch, sink, next_seq, listed, max_rows, chain, sha256) -> (pos, records,"
     " last seq, links, last link's offset)."},
    {"jsonl", (PyCFunction)renderer_jsonl, METH_O, "Append a records.jsonl line (str)."},
    {"csv", (PyCFunction)renderer_csv, METH_O, "Append a results.csv line (str)."},
    {"flush", (PyCFunction)renderer_flush, METH_NOARGS, "Write what is buffered."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef renderer_getset[] = {
    {"rendered", (getter)renderer_get_rendered, NULL, "Result lines rendered here.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RendererType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "slaprobe_speedups._evidence.Renderer",
    .tp_basicsize = sizeof(Renderer),
    .tp_dealloc = (destructor)renderer_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Renders result records into an evidence bundle's tables (records.TableWriter's twin).",
    .tp_methods = renderer_methods,
    .tp_getset = renderer_getset,
    .tp_init = (initproc)renderer_init,
    .tp_new = PyType_GenericNew,
};

/* ---- summaries: raw_summaries' counting, in C ------------------------------------------------- */

static int int64_array(PyObject *seq, int64_t **out, Py_ssize_t *n) {
    PyObject *fast = PySequence_Fast(seq, "edges must be a sequence");
    if (fast == NULL) return -1;
    *n = PySequence_Fast_GET_SIZE(fast);
    *out = PyMem_Malloc(sizeof(int64_t) * (size_t)(*n ? *n : 1));
    if (*out == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < *n; i++) {
        PyObject *v = PySequence_Fast_GET_ITEM(fast, i);
        int overflow = 0;
        long long x = PyLong_Check(v) ? PyLong_AsLongLongAndOverflow(v, &overflow) : 0;
        if (!PyLong_Check(v) || overflow || (x == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            PyMem_Free(*out);
            *out = NULL;
            Py_DECREF(fast);
            return 0; /* not int64s: the caller's Python path */
        }
        (*out)[i] = x;
    }
    Py_DECREF(fast);
    return 1;
}

/* bisect.bisect_right / bisect_left, the same steps (the same answer for any input). */
static inline Py_ssize_t bisect_right_(const int64_t *a, Py_ssize_t n, int64_t x) {
    Py_ssize_t lo = 0, hi = n;
    while (lo < hi) {
        Py_ssize_t mid = ((size_t)lo + hi) / 2;
        if (x < a[mid]) hi = mid;
        else lo = mid + 1;
    }
    return lo;
}

static inline Py_ssize_t bisect_left_(const int64_t *a, Py_ssize_t n, int64_t x) {
    Py_ssize_t lo = 0, hi = n;
    while (lo < hi) {
        Py_ssize_t mid = ((size_t)lo + hi) / 2;
        if (a[mid] < x) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* summarize(rows, edges, latency_edges, last_edge) -> (results per piece, [(bucket, n), ...] per
 * piece) or None: collector.rollups.raw_summaries' counting of its (scheduled_ns, ok, duration_ns)
 * rows into the pieces [edges[i], edges[i + 1]): a row's piece is bisect_right(edges, t) - 1 (or
 * 0 with one piece), its latency bucket min(bisect_left(latency_edges, duration), last_edge) when
 * ok is true, each piece's buckets in the order the rows first give them. None when a value is
 * not an int64 (or a bool where an int is): the caller counts in Python. */
static PyObject *summarize(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *rows, *edges_obj, *lat_obj;
    Py_ssize_t last_edge;
    if (!PyArg_ParseTuple(args, "O!OOn", &PyList_Type, &rows, &edges_obj, &lat_obj, &last_edge)) return NULL;
    int64_t *edges = NULL, *lat = NULL;
    Py_ssize_t ne = 0, nl = 0;
    int got = int64_array(edges_obj, &edges, &ne);
    if (got <= 0) return got < 0 ? NULL : Py_NewRef(Py_None);
    got = int64_array(lat_obj, &lat, &nl);
    if (got <= 0) {
        PyMem_Free(edges);
        return got < 0 ? NULL : Py_NewRef(Py_None);
    }
    PyObject *out = NULL;
    Py_ssize_t pieces = ne - 1, buckets = last_edge + 1;
    int64_t *counts = NULL, *results = NULL;
    Py_ssize_t *order = NULL, norder = 0;
    if (pieces < 1 || last_edge < 0 || last_edge > nl || buckets > 1000000 || pieces > 4000000 / buckets) {
        out = Py_NewRef(Py_None);
        goto end;
    }
    counts = PyMem_Calloc((size_t)(pieces * buckets), sizeof(int64_t));
    results = PyMem_Calloc((size_t)pieces, sizeof(int64_t));
    order = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(pieces * buckets));
    if (counts == NULL || results == NULL || order == NULL) {
        PyErr_NoMemory();
        goto end;
    }
    Py_ssize_t nrows = PyList_GET_SIZE(rows);
    for (Py_ssize_t r = 0; r < nrows; r++) {
        PyObject *row = PyList_GET_ITEM(rows, r);
        if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != 3) goto python;
        PyObject *tv = PyTuple_GET_ITEM(row, 0), *okv = PyTuple_GET_ITEM(row, 1), *dv = PyTuple_GET_ITEM(row, 2);
        if (!PyLong_CheckExact(tv)) goto python;
        int overflow = 0;
        long long t = PyLong_AsLongLongAndOverflow(tv, &overflow);
        if (overflow || (t == -1 && PyErr_Occurred())) goto python;
        Py_ssize_t piece = pieces == 1 ? 0 : bisect_right_(edges, ne, t) - 1;
        if (piece < 0 || piece >= pieces) goto python; /* not one of the rows asked for */
        results[piece]++;
        int ok = PyObject_IsTrue(okv);
        if (ok < 0) goto end;
        if (!ok) continue;
        if (!PyLong_CheckExact(dv)) goto python;
        long long d = PyLong_AsLongLongAndOverflow(dv, &overflow);
        if (overflow || (d == -1 && PyErr_Occurred())) goto python;
        Py_ssize_t b = bisect_left_(lat, nl, d);
        if (b > last_edge) b = last_edge;
        Py_ssize_t k = piece * buckets + b;
        if (counts[k]++ == 0) order[norder++] = k;
    }
    PyObject *res = PyList_New(pieces), *hists = PyList_New(pieces);
    if (res == NULL || hists == NULL) {
        Py_XDECREF(res);
        Py_XDECREF(hists);
        goto end;
    }
    for (Py_ssize_t i = 0; i < pieces; i++) {
        PyObject *v = PyLong_FromLongLong(results[i]), *l = PyList_New(0);
        if (v == NULL || l == NULL) {
            Py_XDECREF(v);
            Py_XDECREF(l);
            Py_DECREF(res);
            Py_DECREF(hists);
            goto end;
        }
        PyList_SET_ITEM(res, i, v);
        PyList_SET_ITEM(hists, i, l);
    }
    for (Py_ssize_t j = 0; j < norder; j++) {
        Py_ssize_t k = order[j];
        PyObject *pair = Py_BuildValue("(nL)", k % buckets, (long long)counts[k]);
        if (pair == NULL || PyList_Append(PyList_GET_ITEM(hists, k / buckets), pair) < 0) {
            Py_XDECREF(pair);
            Py_DECREF(res);
            Py_DECREF(hists);
            goto end;
        }
        Py_DECREF(pair);
    }
    out = Py_BuildValue("(NN)", res, hists);
    goto end;
python:
    PyErr_Clear();
    out = Py_NewRef(Py_None);
end:
    PyMem_Free(edges);
    PyMem_Free(lat);
    PyMem_Free(counts);
    PyMem_Free(results);
    PyMem_Free(order);
    return out;
}

/* ---- adding summaries up ---------------------------------------------------------------------- */

static PyObject *zero; /* 0, as dict.get's default */

/* histogram.add: into[k] = into.get(k, 0) + v for each item of other, in its order. */
static int hist_add(PyObject *into, PyObject *other) {
    if (!PyDict_Check(into) || !PyDict_Check(other)) {
        PyErr_SetString(PyExc_TypeError, "histograms must be dicts");
        return -1;
    }
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(other, &pos, &k, &v)) {
        PyObject *have = PyDict_GetItemWithError(into, k);
        if (have == NULL && PyErr_Occurred()) return -1;
        PyObject *sum = have == NULL ? PyNumber_Add(zero, v) : PyNumber_Add(have, v);
        if (sum == NULL) return -1;
        int bad = PyDict_SetItem(into, k, sum);
        Py_DECREF(sum);
        if (bad) return -1;
    }
    return 0;
}

static int add_attr(PyObject *into, PyObject *other, PyObject *name, int as_or) {
    PyObject *a = PyObject_GetAttr(into, name);
    if (a == NULL) return -1;
    PyObject *b = PyObject_GetAttr(other, name);
    if (b == NULL) {
        Py_DECREF(a);
        return -1;
    }
    PyObject *sum = as_or ? PyNumber_Or(a, b) : PyNumber_Add(a, b);
    Py_DECREF(a);
    Py_DECREF(b);
    if (sum == NULL) return -1;
    int bad = PyObject_SetAttr(into, name, sum);
    Py_DECREF(sum);
    return bad;
}

static PyObject *s_latency, *s_clock, *s_results, *s_unsynced, *s_approximate;

/* add_summaries(out, summaries): ``out.add(s)`` (collector.sla.engine.Summary.add) for each. */
static PyObject *add_summaries(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *out, *many;
    if (!PyArg_ParseTuple(args, "OO", &out, &many)) return NULL;
    PyObject *fast = PySequence_Fast(many, "summaries must be a sequence");
    if (fast == NULL) return NULL;
    PyObject *lat = PyObject_GetAttr(out, s_latency);
    PyObject *clock = lat ? PyObject_GetAttr(out, s_clock) : NULL;
    int ok = clock != NULL;
    for (Py_ssize_t i = 0; ok && i < PySequence_Fast_GET_SIZE(fast); i++) {
        PyObject *s = PySequence_Fast_GET_ITEM(fast, i);
        PyObject *sl = PyObject_GetAttr(s, s_latency);
        ok = sl != NULL && hist_add(lat, sl) == 0;
        Py_XDECREF(sl);
        ok = ok && add_attr(out, s, s_results, 0) == 0;
        PyObject *sc = ok ? PyObject_GetAttr(s, s_clock) : NULL;
        ok = sc != NULL && hist_add(clock, sc) == 0;
        Py_XDECREF(sc);
        ok = ok && add_attr(out, s, s_unsynced, 0) == 0 && add_attr(out, s, s_approximate, 1) == 0;
    }
    Py_XDECREF(lat);
    Py_XDECREF(clock);
    Py_DECREF(fast);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

static PyObject *utc(PyObject *self, PyObject *arg) {
    (void)self;
    long long ns = PyLong_AsLongLong(arg);
    if (ns == -1 && PyErr_Occurred()) return NULL;
    if (ns <= 0) {
        PyErr_SetString(PyExc_ValueError, "utc() takes a time after 1970");
        return NULL;
    }
    char out[32];
    int n = utc_text(ns, out);
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "time out of range");
        return NULL;
    }
    return PyUnicode_FromStringAndSize(out, n);
}

/* The interface version: collector/evidence/records.py uses a build of this one only (a stale
 * build is not used). 2: Renderer.run walks plain links; summarize; add_summaries. */
static PyObject *abi(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyLong_FromLong(2);
}

static PyMethodDef methods[] = {
    {"abi", abi, METH_NOARGS, "The interface version of this module."},
    {"utc", utc, METH_O, "records.utc(ns) for ns > 0."},
    {"add_summaries", add_summaries, METH_VARARGS, "add_summaries(out, summaries): out.add(s) for each."},
    {"summarize", summarize, METH_VARARGS,
     "summarize(rows, edges, latency_edges, last_edge) -> (results, histograms) or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_evidence", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__evidence(void) {
    if (PyType_Ready(&RendererType) < 0) return NULL;
    if ((zero = PyLong_FromLong(0)) == NULL || (s_latency = PyUnicode_InternFromString("latency")) == NULL ||
        (s_clock = PyUnicode_InternFromString("clock")) == NULL ||
        (s_results = PyUnicode_InternFromString("results")) == NULL ||
        (s_unsynced = PyUnicode_InternFromString("unsynced")) == NULL ||
        (s_approximate = PyUnicode_InternFromString("approximate")) == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&RendererType);
    if (PyModule_AddObject(m, "Renderer", (PyObject *)&RendererType) < 0) {
        Py_DECREF(&RendererType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
