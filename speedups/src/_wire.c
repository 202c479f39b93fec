/* slaprobe_speedups._wire: the collector's result decoding, compiled.
 *
 * scan_results() reads a batch's result records (`slaprobe.v1.Record` holding a `Result`) straight
 * into `results` columns, for the conservative subset of the protobuf encoding that it can read
 * with certainty, and only when the record passes every rule of `collector.wire.result_row`. It
 * stops at the first record it does not take: anything else (another record kind, an unknown or
 * repeated field, a wire type not the field's, a varint that is overlong or wider than 64 bits, a
 * length past the end, invalid UTF-8, a boolean not 0 or 1, a repeated phase name or field key, a
 * rule that fails) is left to the caller's exact path (`result_row` on the real type), which gives
 * the exact reason, the row, or the DecodeError. The caller then resumes after that record.
 *
 * Every read is bounds-checked against the record's own bytes. The `phases` and `fields` texts are
 * what `json.dumps(..., separators=(",", ":"))` writes (ensure_ascii; sort_keys for fields; floats
 * by repr, i.e. PyOS_double_to_string 'r' with Py_DTSF_ADD_DOT_0, as float.__repr__ does).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#define ABI 3
#define NCOLS 14
#define MAX_DETAIL_CHARS 4096
#define MAX_KEY_CHARS 64
#define MAX_FIELDS 64
#define MAX_PHASES 32
#define MAX_DURATION_NS (24LL * 3600LL * 1000000000LL)

typedef struct {
    const uint8_t *p;
    Py_ssize_t n;
} span_t;

/* ---- wire format: 1 = read, 0 = outside the subset ------------------------------------------ */

/* A varint of at most 64 bits in its shortest form (no trailing 0x00 continuation byte). */
static inline int rd_varint(const uint8_t *b, Py_ssize_t end, Py_ssize_t *pos, uint64_t *out) {
    Py_ssize_t p = *pos;
    uint64_t v = 0;
    for (int i = 0; i < 10; i++) {
        if (p >= end)
            return 0;
        uint8_t c = b[p++];
        if (i == 9 && c > 1)
            return 0; /* more than 64 bits (or an 11th byte) */
        v |= (uint64_t)(c & 0x7F) << (7 * i);
        if (!(c & 0x80)) {
            if (c == 0 && i > 0)
                return 0; /* overlong */
            *pos = p;
            *out = v;
            return 1;
        }
    }
    return 0;
}

static inline int rd_span(const uint8_t *b, Py_ssize_t end, Py_ssize_t *pos, span_t *s) {
    uint64_t n;
    if (!rd_varint(b, end, pos, &n))
        return 0;
    if (n > (uint64_t)(end - *pos))
        return 0;
    s->p = b + *pos;
    s->n = (Py_ssize_t)n;
    *pos += (Py_ssize_t)n;
    return 1;
}

/* Code points of well-formed UTF-8 (Unicode table 3-7: no overlongs, no surrogates, at most
 * U+10FFFF), or -1. */
static Py_ssize_t utf8_chars(const uint8_t *s, Py_ssize_t n) {
    Py_ssize_t i = 0, chars = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            chars++;
            continue;
        }
        Py_ssize_t need;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF)
            need = 1;
        else if (c == 0xE0) {
            need = 2;
            lo = 0xA0;
        } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF)
            need = 2;
        else if (c == 0xED) {
            need = 2;
            hi = 0x9F;
        } else if (c == 0xF0) {
            need = 3;
            lo = 0x90;
        } else if (c >= 0xF1 && c <= 0xF3)
            need = 3;
        else if (c == 0xF4) {
            need = 3;
            hi = 0x8F;
        } else
            return -1;
        if (need > n - i - 1)
            return -1;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return -1;
        for (Py_ssize_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                return -1;
        i += need + 1;
        chars++;
    }
    return chars;
}

/* ---- a growing output buffer ------------------------------------------------------------------ */

typedef struct {
    char *p;
    Py_ssize_t len, cap;
    char stack[512];
} buf_t;

static void buf_init(buf_t *b) {
    b->p = b->stack;
    b->len = 0;
    b->cap = (Py_ssize_t)sizeof(b->stack);
}

static void buf_free(buf_t *b) {
    if (b->p != b->stack)
        PyMem_Free(b->p);
    b->p = b->stack;
}

static int buf_reserve(buf_t *b, Py_ssize_t extra) {
    if (extra <= b->cap - b->len)
        return 0;
    if (extra > PY_SSIZE_T_MAX / 2 - b->len) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t cap = b->cap * 2;
    if (cap < b->len + extra)
        cap = b->len + extra;
    char *p;
    if (b->p == b->stack) {
        p = PyMem_Malloc((size_t)cap);
        if (p != NULL)
            memcpy(p, b->stack, (size_t)b->len);
    } else
        p = PyMem_Realloc(b->p, (size_t)cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline int buf_put(buf_t *b, const char *s, Py_ssize_t n) {
    if (buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->p + b->len, s, (size_t)n);
    b->len += n;
    return 0;
}

static const char HEX[] = "0123456789abcdef";

static inline char *put_u4(char *o, uint32_t c) {
    *o++ = 'u';
    *o++ = HEX[(c >> 12) & 0xF];
    *o++ = HEX[(c >> 8) & 0xF];
    *o++ = HEX[(c >> 4) & 0xF];
    *o++ = HEX[c & 0xF];
    return o;
}

/* A string as json.encoder.encode_basestring_ascii writes it (quoted), from well-formed UTF-8. */
static int json_str(buf_t *b, span_t s) {
    /* each input byte gives at most 6 output bytes (a 4-byte character gives 12) */
    if (s.n > (PY_SSIZE_T_MAX - 2) / 6) {
        PyErr_NoMemory();
        return -1;
    }
    if (buf_reserve(b, 6 * s.n + 2) < 0)
        return -1;
    char *o = b->p + b->len;
    const uint8_t *p = s.p;
    Py_ssize_t i = 0, n = s.n;
    *o++ = '"';
    while (i < n) {
        uint32_t c = p[i];
        if (c >= 0x20 && c <= 0x7E && c != '"' && c != '\\') {
            *o++ = (char)c;
            i++;
            continue;
        }
        if (c < 0x80)
            i++;
        else if (c < 0xE0) {
            c = ((c & 0x1F) << 6) | (p[i + 1] & 0x3F);
            i += 2;
        } else if (c < 0xF0) {
            c = ((c & 0x0F) << 12) | ((uint32_t)(p[i + 1] & 0x3F) << 6) | (p[i + 2] & 0x3F);
            i += 3;
        } else {
            c = ((c & 0x07) << 18) | ((uint32_t)(p[i + 1] & 0x3F) << 12) | ((uint32_t)(p[i + 2] & 0x3F) << 6) |
                (p[i + 3] & 0x3F);
            i += 4;
        }
        *o++ = '\\';
        switch (c) {
        case '\\':
            *o++ = '\\';
            break;
        case '"':
            *o++ = '"';
            break;
        case '\b':
            *o++ = 'b';
            break;
        case '\f':
            *o++ = 'f';
            break;
        case '\n':
            *o++ = 'n';
            break;
        case '\r':
            *o++ = 'r';
            break;
        case '\t':
            *o++ = 't';
            break;
        default:
            if (c >= 0x10000) {
                uint32_t v = c - 0x10000;
                o = put_u4(o, 0xD800 | (v >> 10));
                *o++ = '\\';
                c = 0xDC00 | (v & 0x3FF);
            }
            o = put_u4(o, c);
        }
    }
    *o++ = '"';
    b->len = o - b->p;
    return 0;
}

static int put_int(buf_t *b, int64_t v) {
    char tmp[24];
    int k = (int)sizeof(tmp);
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[--k] = (char)('0' + (u % 10));
        u /= 10;
    } while (u);
    if (v < 0)
        tmp[--k] = '-';
    return buf_put(b, tmp + k, (Py_ssize_t)sizeof(tmp) - k);
}

static PyObject *buf_str(buf_t *b) { return PyUnicode_DecodeASCII(b->p, b->len, NULL); }

/* ---- one result -------------------------------------------------------------------------------- */

typedef struct {
    span_t name;
    int64_t duration;
} phase_t;

enum { V_NONE = 0, V_NUMBER = 1, V_TEXT = 2, V_FLAG = 3 };

typedef struct {
    span_t key;
    int kind;
    double number;
    span_t text;
    int flag;
} entry_t;

typedef struct {
    uint64_t seq;
    span_t check_id, revision, error_kind, detail;
    int64_t scheduled, started, duration, clock_offset;
    int success, degraded, synced;
    int nphases, nentries;
    span_t phase_raw[MAX_PHASES];
    span_t entry_raw[MAX_FIELDS];
    span_t fields_all; /* the bytes from the first entry's tag to the last entry's end */
    int fields_contiguous;
} result_t;

#define BIT(f) (1u << (f))

/* A Record with exactly one seq (optional) and one result, nothing else. */
static int parse_record(const uint8_t *b, Py_ssize_t n, uint64_t *seq, span_t *result) {
    Py_ssize_t pos = 0;
    int seen_seq = 0, seen_result = 0;
    *seq = 0;
    while (pos < n) {
        uint64_t key;
        if (!rd_varint(b, n, &pos, &key))
            return 0;
        if (key == ((1 << 3) | 0) && !seen_seq) {
            if (!rd_varint(b, n, &pos, seq))
                return 0;
            seen_seq = 1;
        } else if (key == ((2 << 3) | 2) && !seen_result) {
            if (!rd_span(b, n, &pos, result))
                return 0;
            seen_result = 1;
        } else
            return 0;
    }
    return seen_result;
}

static inline int rd_bool(const uint8_t *b, Py_ssize_t end, Py_ssize_t *pos, int *out) {
    uint64_t v;
    if (!rd_varint(b, end, pos, &v) || v > 1)
        return 0;
    *out = (int)v;
    return 1;
}

static int parse_result(const uint8_t *b, Py_ssize_t n, result_t *r) {
    Py_ssize_t pos = 0;
    unsigned seen = 0;
    int last_field = 0;
    uint64_t v;
    memset(&r->check_id, 0, sizeof(span_t) * 4);
    r->scheduled = r->started = r->duration = r->clock_offset = 0;
    r->success = r->degraded = r->synced = 0;
    r->nphases = r->nentries = 0;
    r->fields_all.p = NULL;
    r->fields_all.n = 0;
    r->fields_contiguous = 1;
    while (pos < n) {
        Py_ssize_t tag_at = pos;
        uint64_t key;
        if (!rd_varint(b, n, &pos, &key) || key > ((13 << 3) | 7))
            return 0;
        int field = (int)(key >> 3);
        int wt = (int)(key & 7);
        if (field != 10 && field != 11) {
            if (seen & BIT(field))
                return 0; /* a repeated scalar: last-wins (or merge) semantics */
            seen |= BIT(field);
        }
        switch (field) {
        case 1:
        case 2:
        case 8:
        case 9: {
            if (wt != 2)
                return 0;
            span_t *s = field == 1 ? &r->check_id : field == 2 ? &r->revision : field == 8 ? &r->error_kind : &r->detail;
            if (!rd_span(b, n, &pos, s))
                return 0;
            break;
        }
        case 3:
        case 4:
        case 5:
        case 12:
            if (wt != 0 || !rd_varint(b, n, &pos, &v))
                return 0;
            if (field == 3)
                r->scheduled = (int64_t)v;
            else if (field == 4)
                r->started = (int64_t)v;
            else if (field == 5)
                r->duration = (int64_t)v;
            else
                r->clock_offset = (int64_t)v;
            break;
        case 6:
        case 7:
        case 13:
            if (wt != 0 || !rd_bool(b, n, &pos, field == 6 ? &r->success : field == 7 ? &r->degraded : &r->synced))
                return 0;
            break;
        case 10:
            if (wt != 2 || r->nphases >= MAX_PHASES)
                return 0;
            if (!rd_span(b, n, &pos, &r->phase_raw[r->nphases]))
                return 0;
            r->nphases++;
            break;
        case 11:
            if (wt != 2 || r->nentries >= MAX_FIELDS)
                return 0;
            if (!rd_span(b, n, &pos, &r->entry_raw[r->nentries]))
                return 0;
            if (r->nentries == 0)
                r->fields_all.p = b + tag_at;
            else if (last_field != 11)
                r->fields_contiguous = 0;
            r->fields_all.n = (b + pos) - r->fields_all.p;
            r->nentries++;
            break;
        default:
            return 0;
        }
        last_field = field;
    }
    return 1;
}

static int parse_phase(span_t raw, phase_t *ph) {
    const uint8_t *b = raw.p;
    Py_ssize_t n = raw.n, pos = 0;
    int seen_name = 0, seen_dur = 0;
    uint64_t v;
    ph->name.p = b;
    ph->name.n = 0;
    ph->duration = 0;
    while (pos < n) {
        uint64_t key;
        if (!rd_varint(b, n, &pos, &key))
            return 0;
        if (key == ((1 << 3) | 2) && !seen_name) {
            if (!rd_span(b, n, &pos, &ph->name))
                return 0;
            seen_name = 1;
        } else if (key == ((2 << 3) | 0) && !seen_dur) {
            if (!rd_varint(b, n, &pos, &v))
                return 0;
            ph->duration = (int64_t)v;
            seen_dur = 1;
        } else
            return 0;
    }
    return 1;
}

static int parse_value(span_t raw, entry_t *e) {
    const uint8_t *b = raw.p;
    Py_ssize_t n = raw.n, pos = 0;
    e->kind = V_NONE;
    while (pos < n) {
        uint64_t key, v;
        if (!rd_varint(b, n, &pos, &key) || e->kind != V_NONE)
            return 0; /* a second member of the oneof: last-wins semantics */
        if (key == ((1 << 3) | 1)) {
            if (n - pos < 8)
                return 0;
            uint64_t bits = 0;
            for (int k = 7; k >= 0; k--)
                bits = (bits << 8) | b[pos + k];
            pos += 8;
            memcpy(&e->number, &bits, sizeof(double));
            e->kind = V_NUMBER;
        } else if (key == ((2 << 3) | 2)) {
            if (!rd_span(b, n, &pos, &e->text))
                return 0;
            e->kind = V_TEXT;
        } else if (key == ((3 << 3) | 0)) {
            if (!rd_varint(b, n, &pos, &v) || v > 1)
                return 0;
            e->flag = (int)v;
            e->kind = V_FLAG;
        } else
            return 0;
    }
    return e->kind != V_NONE; /* no member: a rejection */
}

/* A map entry with a key and a value, each once, the value holding exactly one member. */
static int parse_entry(span_t raw, entry_t *e) {
    const uint8_t *b = raw.p;
    Py_ssize_t n = raw.n, pos = 0;
    int seen_key = 0, seen_value = 0;
    span_t value = {NULL, 0};
    while (pos < n) {
        uint64_t key;
        if (!rd_varint(b, n, &pos, &key))
            return 0;
        if (key == ((1 << 3) | 2) && !seen_key) {
            if (!rd_span(b, n, &pos, &e->key))
                return 0;
            seen_key = 1;
        } else if (key == ((2 << 3) | 2) && !seen_value) {
            if (!rd_span(b, n, &pos, &value))
                return 0;
            seen_value = 1;
        } else
            return 0;
    }
    if (!seen_key || !seen_value)
        return 0; /* an empty key, or no value: rejections */
    return parse_value(value, e);
}

static inline int span_cmp(span_t a, span_t b) {
    Py_ssize_t m = a.n < b.n ? a.n : b.n;
    int c = m ? memcmp(a.p, b.p, (size_t)m) : 0;
    if (c)
        return c;
    return a.n < b.n ? -1 : a.n > b.n ? 1 : 0;
}

static inline int span_eq(span_t a, span_t b) { return a.n == b.n && (a.n == 0 || memcmp(a.p, b.p, (size_t)a.n) == 0); }

/* phases_json of the phases: 1 written, 0 outside the subset (or a rule), -1 error. */
static int phases_text(result_t *r, buf_t *out) {
    phase_t ph[MAX_PHASES];
    for (int k = 0; k < r->nphases; k++) {
        if (!parse_phase(r->phase_raw[k], &ph[k]))
            return 0;
        Py_ssize_t chars = utf8_chars(ph[k].name.p, ph[k].name.n);
        if (chars < 1 || chars > MAX_KEY_CHARS || ph[k].duration < 0 || ph[k].duration > MAX_DURATION_NS)
            return 0;
        for (int j = 0; j < k; j++)
            if (span_eq(ph[j].name, ph[k].name))
                return 0; /* a repeated name: left to the exact path (dict semantics) */
    }
    if (buf_put(out, "{", 1) < 0)
        return -1;
    for (int k = 0; k < r->nphases; k++) {
        if ((k && buf_put(out, ",", 1) < 0) || json_str(out, ph[k].name) < 0 || buf_put(out, ":", 1) < 0 ||
            put_int(out, ph[k].duration) < 0)
            return -1;
    }
    if (buf_put(out, "}", 1) < 0)
        return -1;
    return 1;
}

/* fields_json of the entries: 1 written, 0 outside the subset (or a rule), -1 error. */
static int fields_text(result_t *r, buf_t *out) {
    entry_t e[MAX_FIELDS];
    int order[MAX_FIELDS];
    int n = r->nentries;
    for (int k = 0; k < n; k++) {
        if (!parse_entry(r->entry_raw[k], &e[k]))
            return 0;
        Py_ssize_t chars = utf8_chars(e[k].key.p, e[k].key.n);
        if (chars < 1 || chars > MAX_KEY_CHARS)
            return 0;
        if (e[k].kind == V_NUMBER && !isfinite(e[k].number))
            return 0;
        if (e[k].kind == V_TEXT) {
            chars = utf8_chars(e[k].text.p, e[k].text.n);
            if (chars < 0 || chars > MAX_DETAIL_CHARS)
                return 0;
        }
        /* insertion sort by key bytes (UTF-8 byte order is code point order, as Python sorts str) */
        int j = k;
        while (j > 0) {
            int c = span_cmp(e[order[j - 1]].key, e[k].key);
            if (c == 0)
                return 0; /* a repeated key: last-wins map semantics, left to the exact path */
            if (c < 0)
                break;
            order[j] = order[j - 1];
            j--;
        }
        order[j] = k;
    }
    if (buf_put(out, "{", 1) < 0)
        return -1;
    for (int k = 0; k < n; k++) {
        entry_t *x = &e[order[k]];
        if ((k && buf_put(out, ",", 1) < 0) || json_str(out, x->key) < 0 || buf_put(out, ":", 1) < 0)
            return -1;
        if (x->kind == V_NUMBER) {
            char *s = PyOS_double_to_string(x->number, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
            if (s == NULL)
                return -1;
            int rc = buf_put(out, s, (Py_ssize_t)strlen(s));
            PyMem_Free(s);
            if (rc < 0)
                return -1;
        } else if (x->kind == V_TEXT) {
            if (json_str(out, x->text) < 0)
                return -1;
        } else if (buf_put(out, x->flag ? "true" : "false", x->flag ? 4 : 5) < 0)
            return -1;
    }
    if (buf_put(out, "}", 1) < 0)
        return -1;
    return 1;
}

/* ---- per call: the last text of each repeating column, kept by its bytes ---------------------- */

enum { C_REVISION, C_KIND, C_DETAIL, C_FIELDS, C_COUNT };

typedef struct {
    PyObject *owner; /* the bytes object the span points into (a strong reference) */
    span_t key;
    PyObject *text;
} memo_t;

static void memo_clear(memo_t *m) {
    Py_CLEAR(m->owner);
    Py_CLEAR(m->text);
    m->key.p = NULL;
    m->key.n = 0;
}

/* The str of UTF-8 bytes `s` (already validated), reusing the last one when the bytes repeat. */
static PyObject *memo_str(memo_t *m, PyObject *owner, span_t s) {
    if (m->text != NULL && span_eq(m->key, s)) {
        Py_INCREF(m->text);
        return m->text;
    }
    PyObject *t = PyUnicode_DecodeUTF8((const char *)s.p, s.n, NULL);
    if (t == NULL)
        return NULL;
    memo_clear(m);
    Py_INCREF(owner);
    m->owner = owner;
    m->key = s;
    Py_INCREF(t);
    m->text = t;
    return t;
}

static void memo_put(memo_t *m, PyObject *owner, span_t key, PyObject *text) {
    memo_clear(m);
    Py_INCREF(owner);
    m->owner = owner;
    m->key = key;
    Py_INCREF(text);
    m->text = text;
}

typedef struct {
    PyObject *checks; /* dict (looked up directly) or a mapping with .get */
    int64_t limit;
    PyObject *cols[NCOLS];
    PyObject *seqs;
    memo_t memo[C_COUNT];
    PyObject *empty; /* "{}" */
} scan_t;

static PyObject *str_get; /* "get" */

/* One record: 1 taken (appended), 0 left to the exact path, -1 error (exception set). */
static int take(scan_t *st, PyObject *item) {
    const uint8_t *b = (const uint8_t *)PyBytes_AS_STRING(item);
    Py_ssize_t n = PyBytes_GET_SIZE(item);
    span_t res;
    result_t r;
    if (!parse_record(b, n, &r.seq, &res) || !parse_result(res.p, res.n, &r))
        return 0;
    /* the rules of result_row that need no object, cheapest first */
    if (r.scheduled <= 0 || r.scheduled > st->limit || r.started <= 0 || r.started > st->limit)
        return 0;
    if (r.duration < 0 || r.duration > MAX_DURATION_NS)
        return 0;
    if (r.success == (r.error_kind.n != 0))
        return 0;
    Py_ssize_t chars = utf8_chars(r.detail.p, r.detail.n);
    if (chars < 0 || chars > MAX_DETAIL_CHARS)
        return 0;
    if ((r.detail.n && memchr(r.detail.p, 0, (size_t)r.detail.n)) ||
        (r.error_kind.n && memchr(r.error_kind.p, 0, (size_t)r.error_kind.n)))
        return 0;
    if (utf8_chars(r.error_kind.p, r.error_kind.n) < 0 || utf8_chars(r.check_id.p, r.check_id.n) < 0 ||
        utf8_chars(r.revision.p, r.revision.n) < 0)
        return 0;

    PyObject *vals[NCOLS] = {NULL};
    PyObject *check_id = NULL, *row = NULL;
    int rc = -1;
    buf_t out;
    buf_init(&out);

    /* phases and fields (their rules too) */
    PyObject *phases = NULL, *fields = NULL;
    if (r.nphases) {
        int k = phases_text(&r, &out);
        if (k <= 0) {
            rc = k;
            goto done;
        }
        phases = buf_str(&out);
        if (phases == NULL)
            goto done;
    } else {
        Py_INCREF(st->empty);
        phases = st->empty;
    }
    vals[10] = phases;
    if (r.nentries) {
        memo_t *m = &st->memo[C_FIELDS];
        if (r.fields_contiguous && m->text != NULL && span_eq(m->key, r.fields_all)) {
            Py_INCREF(m->text);
            fields = m->text; /* the same entries' bytes: the same rules held, the same text */
        } else {
            out.len = 0;
            int k = fields_text(&r, &out);
            if (k <= 0) {
                rc = k;
                goto done;
            }
            fields = buf_str(&out);
            if (fields == NULL)
                goto done;
            if (r.fields_contiguous)
                memo_put(m, item, r.fields_all, fields);
        }
    } else {
        Py_INCREF(st->empty);
        fields = st->empty;
    }
    vals[11] = fields;

    /* the check */
    check_id = PyUnicode_DecodeUTF8((const char *)r.check_id.p, r.check_id.n, NULL);
    if (check_id == NULL)
        goto done;
    if (PyDict_CheckExact(st->checks)) {
        row = PyDict_GetItemWithError(st->checks, check_id);
        if (row == NULL && PyErr_Occurred())
            goto done;
        Py_XINCREF(row);
    } else {
        row = PyObject_CallMethodObjArgs(st->checks, str_get, check_id, Py_None, NULL);
        if (row == NULL)
            goto done;
    }
    if (row == NULL || row == Py_None) {
        rc = 0;
        goto done;
    }
    vals[1] = row;
    row = NULL;

    if ((vals[0] = PyLong_FromUnsignedLongLong(r.seq)) == NULL ||
        (vals[2] = memo_str(&st->memo[C_REVISION], item, r.revision)) == NULL ||
        (vals[3] = PyLong_FromLongLong(r.scheduled)) == NULL ||
        (vals[4] = PyLong_FromLongLong(r.started)) == NULL ||
        (vals[5] = PyLong_FromLongLong(r.duration)) == NULL ||
        (vals[6] = PyLong_FromLong(r.success)) == NULL || (vals[7] = PyLong_FromLong(r.degraded)) == NULL ||
        (vals[8] = memo_str(&st->memo[C_KIND], item, r.error_kind)) == NULL ||
        (vals[9] = memo_str(&st->memo[C_DETAIL], item, r.detail)) == NULL ||
        (vals[12] = PyLong_FromLongLong(r.clock_offset)) == NULL || (vals[13] = PyLong_FromLong(r.synced)) == NULL)
        goto done;
    if (PyList_Append(st->seqs, vals[0]) < 0)
        goto done;
    for (int k = 0; k < NCOLS; k++)
        if (PyList_Append(st->cols[k], vals[k]) < 0)
            goto done;
    rc = 1;
done:
    if (rc < 0 && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        /* never expected (the bytes were validated as UTF-8 first), but if CPython disagrees the
         * exact path decides */
        PyErr_Clear();
        rc = 0;
    }
    buf_free(&out);
    Py_XDECREF(check_id);
    Py_XDECREF(row);
    for (int k = 0; k < NCOLS; k++)
        Py_XDECREF(vals[k]);
    return rc;
}

static PyObject *scan_results(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "scan_results(raws, start, checks, limit, columns, seqs)");
        return NULL;
    }
    PyObject *raws = args[0], *columns = args[4];
    if (!PyList_Check(raws) || !PyList_Check(columns) || PyList_GET_SIZE(columns) != NCOLS ||
        !PyList_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError, "raws, columns (14 lists) and seqs must be lists");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred())
        return NULL;
    if (start < 0) {
        PyErr_SetString(PyExc_ValueError, "start must not be negative");
        return NULL;
    }
    int overflow = 0;
    long long limit = PyLong_AsLongLongAndOverflow(args[3], &overflow);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    if (overflow > 0)
        limit = INT64_MAX; /* every int64 time is within it */
    else if (overflow < 0)
        limit = 0; /* no positive time is within it */

    scan_t st;
    memset(&st, 0, sizeof(st));
    st.checks = args[2];
    st.limit = (int64_t)limit;
    st.seqs = args[5];
    /* the column lists, held for the call (the columns list itself could change meanwhile) */
    for (int k = 0; k < NCOLS; k++) {
        PyObject *c = PyList_GET_ITEM(columns, k);
        if (!PyList_Check(c)) {
            for (int j = 0; j < k; j++)
                Py_DECREF(st.cols[j]);
            PyErr_SetString(PyExc_TypeError, "columns must hold 14 lists");
            return NULL;
        }
        Py_INCREF(c);
        st.cols[k] = c;
    }
    Py_INCREF(st.checks);
    Py_INCREF(st.seqs);
    st.empty = PyUnicode_FromString("{}");
    PyObject *ret = NULL;
    Py_ssize_t i = start;
    if (st.empty == NULL)
        goto end;
    for (;; i++) {
        /* the list is read again each time: a mapping's .get could have changed it */
        if (i >= PyList_GET_SIZE(raws))
            break;
        PyObject *item = PyList_GET_ITEM(raws, i);
        if (!PyBytes_CheckExact(item))
            break;
        Py_INCREF(item);
        int rc = take(&st, item);
        Py_DECREF(item);
        if (rc < 0)
            goto end;
        if (rc == 0)
            break;
    }
    ret = PyLong_FromSsize_t(i);
end:
    for (int k = 0; k < C_COUNT; k++)
        memo_clear(&st.memo[k]);
    for (int k = 0; k < NCOLS; k++)
        Py_DECREF(st.cols[k]);
    Py_DECREF(st.checks);
    Py_DECREF(st.seqs);
    Py_XDECREF(st.empty);
    return ret;
}

/* ---- a batch split into its header and its records' bytes ------------------------------------- */

/* collector/wire.py's _varint: up to 10 bytes (an 11th is "too long"), any value; *huge when the
 * value does not fit in 64 bits (only ever compared with lengths, which it then exceeds). */
static const char *py_varint(const uint8_t *b, Py_ssize_t n, Py_ssize_t *pos, uint64_t *out, int *huge) {
    uint64_t v = 0;
    int shift = 0;
    Py_ssize_t p = *pos;
    *huge = 0;
    for (;;) {
        if (p >= n)
            return "truncated varint";
        uint8_t c = b[p++];
        uint64_t bits = c & 0x7F;
        if (shift < 64) {
            v |= bits << shift;
            if (shift > 57 && (bits >> (64 - shift)))
                *huge = 1;
        } else if (bits)
            *huge = 1;
        if (!(c & 0x80)) {
            *pos = p;
            *out = v;
            return NULL;
        }
        shift += 7;
        if (shift > 63)
            return "varint too long";
    }
}

/* split_batch(raw, records) -> (header bytes, [record bytes] or None), or the DecodeError's message
 * (str): collector/wire.py's _scan_batch, the same bytes and the same errors. */
static PyObject *split_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "split_batch(raw: bytes, records: bool)");
        return NULL;
    }
    int want = PyObject_IsTrue(args[1]);
    if (want < 0)
        return NULL;
    PyObject *raw = args[0];
    const uint8_t *b = (const uint8_t *)PyBytes_AS_STRING(raw);
    Py_ssize_t n = PyBytes_GET_SIZE(raw), pos = 0;
    PyObject *records = NULL, *ret = NULL;
    const char *err = NULL;
    buf_t header;
    buf_init(&header);
    if (want && (records = PyList_New(0)) == NULL)
        goto done;
    while (pos < n) {
        Py_ssize_t start = pos;
        uint64_t v;
        int huge;
        if (b[pos] == 0x2A) { /* field 5 (records), wire type 2, as a one-byte key */
            pos++;
            if ((err = py_varint(b, n, &pos, &v, &huge)) != NULL)
                break;
            if (huge || v > (uint64_t)(n - pos)) {
                err = "truncated record";
                break;
            }
            if (records != NULL) {
                PyObject *r = PyBytes_FromStringAndSize((const char *)b + pos, (Py_ssize_t)v);
                if (r == NULL)
                    goto done;
                int rc = PyList_Append(records, r);
                Py_DECREF(r);
                if (rc < 0)
                    goto done;
            }
            pos += (Py_ssize_t)v;
            continue;
        }
        if ((err = py_varint(b, n, &pos, &v, &huge)) != NULL)
            break;
        int wt = (int)(b[start] & 7);
        int past = 0;
        if (wt == 0) {
            if ((err = py_varint(b, n, &pos, &v, &huge)) != NULL)
                break;
        } else if (wt == 1 || wt == 5) {
            Py_ssize_t k = wt == 1 ? 8 : 4;
            if (k > n - pos)
                past = 1;
            else
                pos += k;
        } else if (wt == 2) {
            if ((err = py_varint(b, n, &pos, &v, &huge)) != NULL)
                break;
            if (huge || v > (uint64_t)(n - pos))
                past = 1;
            else
                pos += (Py_ssize_t)v;
        } else {
            static const char *const unexpected[8] = {
                NULL, NULL, NULL, "unexpected wire type 3", "unexpected wire type 4", NULL,
                "unexpected wire type 6", "unexpected wire type 7"};
            err = unexpected[wt];
            break;
        }
        if (past) {
            err = "truncated field";
            break;
        }
        if (buf_put(&header, (const char *)b + start, pos - start) < 0)
            goto done;
    }
    if (err != NULL) {
        ret = PyUnicode_FromString(err);
        goto done;
    }
    {
        PyObject *h = PyBytes_FromStringAndSize(header.p, header.len);
        if (h == NULL)
            goto done;
        ret = PyTuple_Pack(2, h, records != NULL ? records : Py_None);
        Py_DECREF(h);
    }
done:
    buf_free(&header);
    Py_XDECREF(records);
    return ret;
}

static PyObject *abi(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyLong_FromLong(ABI);
}

static PyMethodDef methods[] = {
    {"abi", abi, METH_NOARGS, "The interface version of this module."},
    {"scan_results", (PyCFunction)(void (*)(void))scan_results, METH_FASTCALL,
     "scan_results(raws, start, checks, limit, columns, seqs) -> index\n\n"
     "Append the result records raws[start:] to the 14 column lists and their seqs to seqs, up to the\n"
     "first record left to the exact path; return that record's index (len(raws) when none)."},
    {"split_batch", (PyCFunction)(void (*)(void))split_batch, METH_FASTCALL,
     "split_batch(raw, records) -> (header, [record bytes] or None), or the DecodeError's message"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_wire", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__wire(void) {
    str_get = PyUnicode_InternFromString("get");
    if (str_get == NULL)
        return NULL;
    return PyModule_Create(&module);
}
