/* Native field scanner for the fast reader (see NOTE [ Native scanner ] in _native.py).
 *
 * scan(buffer, start, stop) reads buffer[start:stop], a run of JSON values separated by
 * commas (one piece of Kineto's traceEvents array), and returns the fields ckprof needs
 * as raw int64 columns plus the piece's unique strings -- or None when the piece holds
 * anything it does not handle exactly like the msgspec reader (then the caller uses
 * that reader, which also knows how to fall back to the careful one). It never guesses:
 * invalid JSON, an unknown "ph", B/E events, keys written with escapes, duplicate keys,
 * numbers that are not plain (sign, exponent, more than 3 decimals, out of range),
 * wrongly typed fields, nesting deeper than 64: all make it answer None.
 *
 * The scan itself runs without the GIL, so two threads scan two pieces at once.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

typedef unsigned char u8;

/* ------------------------------------------------------------------ growable columns */

typedef struct {
    int64_t *d;
    Py_ssize_t n, cap;
} vec;

static int vec_grow(vec *v) {
    Py_ssize_t cap = v->cap ? v->cap * 2 : 8192;
    int64_t *d = (int64_t *)realloc(v->d, (size_t)cap * sizeof(int64_t));
    if (!d) return -1;
    v->d = d;
    v->cap = cap;
    return 0;
}

#define PUSH(v, x)                                              \
    do {                                                        \
        if ((v)->n == (v)->cap && vec_grow(v) < 0) return -2;   \
        (v)->d[(v)->n++] = (x);                                 \
    } while (0)

/* ------------------------------------------------------------------ string interning */

typedef struct {
    uint64_t h;
    const u8 *p;
    uint32_t len;
    int32_t code;
} slot;

typedef struct {
    slot *slots;
    uint32_t mask;
    int32_t n;
    const u8 **up; /* uniques in first-seen order */
    uint32_t *ul;
    Py_ssize_t ucap;
} interner;

static uint64_t hash_words(const u8 *p, size_t n, uint64_t h);

/* Long texts (kernel signatures run to hundreds of bytes) hash their first and last 32
   bytes and their length; equal hashes are confirmed with memcmp, which is fast. */
static uint64_t hash_bytes(const u8 *p, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)n;
    if (n > 64) return hash_words(p + n - 32, 32, hash_words(p, 32, h));
    return hash_words(p, n, h);
}

static uint64_t hash_words(const u8 *p, size_t n, uint64_t h) {
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, p, n);
    h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 29;
    return h;
}

static int interner_init(interner *t) {
    t->mask = 1023;
    t->n = 0;
    t->slots = (slot *)calloc(t->mask + 1, sizeof(slot));
    t->ucap = 256;
    t->up = (const u8 **)malloc(sizeof(u8 *) * t->ucap);
    t->ul = (uint32_t *)malloc(sizeof(uint32_t) * t->ucap);
    return (t->slots && t->up && t->ul) ? 0 : -1;
}

static void interner_free(interner *t) {
    free(t->slots);
    free((void *)t->up);
    free(t->ul);
}

static int interner_rehash(interner *t) {
    uint32_t cap = (t->mask + 1) * 2;
    slot *s = (slot *)calloc(cap, sizeof(slot));
    if (!s) return -1;
    for (uint32_t i = 0; i <= t->mask; i++) {
        slot *o = &t->slots[i];
        if (!o->code) continue;
        uint32_t j = (uint32_t)o->h & (cap - 1);
        while (s[j].code) j = (j + 1) & (cap - 1);
        s[j] = *o;
    }
    free(t->slots);
    t->slots = s;
    t->mask = cap - 1;
    return 0;
}

/* code (0-based, first-seen order) of the raw text p[0:len]; -1 on memory error.
   Slots store code + 1 so that 0 marks an empty slot. */
static int32_t intern(interner *t, const u8 *p, uint32_t len) {
    uint64_t h = hash_bytes(p, len);
    uint32_t j = (uint32_t)h & t->mask;
    for (;;) {
        slot *s = &t->slots[j];
        if (!s->code) break;
        if (s->h == h && s->len == len && memcmp(s->p, p, len) == 0) return s->code - 1;
        j = (j + 1) & t->mask;
    }
    if (t->n == t->ucap) {
        Py_ssize_t c = t->ucap * 2;
        const u8 **up = (const u8 **)realloc((void *)t->up, sizeof(u8 *) * c);
        if (!up) return -1;
        t->up = up;
        uint32_t *ul = (uint32_t *)realloc(t->ul, sizeof(uint32_t) * c);
        if (!ul) return -1;
        t->ul = ul;
        t->ucap = c;
    }
    int32_t code = t->n++;
    t->up[code] = p;
    t->ul[code] = len;
    slot *s = &t->slots[j];
    s->h = h;
    s->p = p;
    s->len = len;
    s->code = code + 1;
    if ((uint32_t)t->n * 2 > t->mask) {
        if (interner_rehash(t) < 0) return -1;
    }
    return code;
}

/* ------------------------------------------------------------------ the parser */

typedef struct {
    const u8 *b;
    Py_ssize_t pos, end;
    int depth;
    const char *why; /* reason for refusing (for tests and debugging) */
    Py_ssize_t at;
} parser;

#define REFUSE(P, reason) \
    do {                  \
        (P)->why = (reason); \
        (P)->at = (P)->pos;  \
        return -1;        \
    } while (0)

static inline void skip_ws(parser *P) {
    const u8 *b = P->b;
    Py_ssize_t i = P->pos, e = P->end;
    while (i < e && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t')) i++;
    P->pos = i;
}

static inline int hexdigit(u8 c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* the 4 hex digits at b[i:i+4] (before e) as a code unit, or -1 */
static inline int hex4(const u8 *b, Py_ssize_t i, Py_ssize_t e) {
    if (i + 4 > e) return -1;
    int v = 0;
    for (int k = 0; k < 4; k++) {
        int d = hexdigit(b[i + k]);
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* At '"': the string's raw content [*s, *s + *len); *esc set when it holds escapes. */
static int scan_string(parser *P, const u8 **s, uint32_t *len, int *esc) {
    const u8 *b = P->b;
    Py_ssize_t i = P->pos + 1, e = P->end;
    Py_ssize_t start = i;
    int escaped = 0;
    for (;;) {
#ifdef __SSE2__
        {   /* 16 bytes at a time: stop at '"', '\\' or a control character */
            const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\'),
                          ctl = _mm_set1_epi8(0x1F);
            while (i + 16 <= e) {
                __m128i v = _mm_loadu_si128((const __m128i *)(b + i));
                __m128i hit = _mm_or_si128(
                    _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, bslash)),
                    _mm_cmpeq_epi8(_mm_max_epu8(v, ctl), ctl));
                int mask = _mm_movemask_epi8(hit);
                if (mask) {
                    i += __builtin_ctz((unsigned)mask);
                    goto special;
                }
                i += 16;
            }
        }
#endif
        while (i < e) {
            u8 c = b[i];
            if (c == '"' || c == '\\' || c < 0x20) break;
            i++;
        }
#ifdef __SSE2__
    special:
#endif
        if (i >= e) REFUSE(P, "unterminated string");
        u8 c = b[i];
        if (c == '"') break;
        if (c < 0x20) {
            P->pos = i;
            REFUSE(P, "control character in a string");
        }
        /* backslash */
        escaped = 1;
        if (i + 1 >= e) REFUSE(P, "unterminated string");
        u8 x = b[i + 1];
        if (x == 'u') {
            int cu = hex4(b, i + 2, e);
            if (cu < 0 || (cu >= 0xDC00 && cu <= 0xDFFF)) {
                P->pos = i;
                REFUSE(P, "bad \\u escape");
            }
            i += 6;
            if (cu >= 0xD800 && cu <= 0xDBFF) { /* a surrogate pair, as msgspec requires */
                int lo = (i + 1 < e && b[i] == '\\' && b[i + 1] == 'u') ? hex4(b, i + 2, e) : -1;
                if (lo < 0xDC00 || lo > 0xDFFF) {
                    P->pos = i;
                    REFUSE(P, "lone surrogate escape");
                }
                i += 6;
            }
        } else if (x == '"' || x == '\\' || x == '/' || x == 'b' || x == 'f' || x == 'n' ||
                   x == 'r' || x == 't') {
            i += 2;
        } else {
            P->pos = i;
            REFUSE(P, "bad escape");
        }
    }
    if (i - start > 0x7fffffff) REFUSE(P, "string too long");
    *s = b + start;
    *len = (uint32_t)(i - start);
    *esc = escaped;
    P->pos = i + 1;
    return 0;
}

typedef struct {
    int neg, has_exp;
    const u8 *ip; /* integer digits */
    int ilen;
    const u8 *fp; /* fraction digits */
    int flen;
} number;

static int scan_number(parser *P, number *nm) {
    const u8 *b = P->b;
    Py_ssize_t i = P->pos, e = P->end;
    nm->neg = 0;
    nm->has_exp = 0;
    nm->flen = 0;
    nm->fp = NULL;
    if (i < e && b[i] == '-') {
        nm->neg = 1;
        i++;
    }
    if (i >= e || b[i] < '0' || b[i] > '9') REFUSE(P, "bad number");
    Py_ssize_t is = i;
    if (b[i] == '0') {
        i++;
    } else {
        while (i < e && b[i] >= '0' && b[i] <= '9') i++;
    }
    if (i - is > 1000) REFUSE(P, "number too long");
    nm->ip = b + is;
    nm->ilen = (int)(i - is);
    if (i < e && b[i] == '.') {
        i++;
        Py_ssize_t fs = i;
        while (i < e && b[i] >= '0' && b[i] <= '9') i++;
        if (i == fs) REFUSE(P, "bad number");
        if (i - fs > 1000) REFUSE(P, "number too long");
        nm->fp = b + fs;
        nm->flen = (int)(i - fs);
    }
    if (i < e && (b[i] == 'e' || b[i] == 'E')) {
        i++;
        if (i < e && (b[i] == '+' || b[i] == '-')) i++;
        Py_ssize_t xs = i;
        while (i < e && b[i] >= '0' && b[i] <= '9') i++;
        if (i == xs) REFUSE(P, "bad number");
        nm->has_exp = 1;
    }
    /* a number must end at a delimiter (JSON has no "12abc") */
    if (i < e) {
        u8 c = b[i];
        if (!(c == ',' || c == '}' || c == ']' || c == ' ' || c == '\n' || c == '\r' || c == '\t'))
            REFUSE(P, "bad number");
    }
    P->pos = i;
    return 0;
}

/* microseconds with at most 3 decimals, no sign/exponent, integer part < limit -> exact ns */
static int number_us_to_ns(const number *nm, uint64_t limit, int64_t *out) {
    if (nm->neg || nm->has_exp || nm->flen > 3 || nm->ilen > 16) return -1;
    uint64_t v = 0;
    for (int k = 0; k < nm->ilen; k++) v = v * 10 + (uint64_t)(nm->ip[k] - '0');
    if (v >= limit) return -1;
    uint64_t f = 0;
    for (int k = 0; k < 3; k++) f = f * 10 + (k < nm->flen ? (uint64_t)(nm->fp[k] - '0') : 0);
    *out = (int64_t)(v * 1000 + f);
    return 0;
}

/* a plain JSON integer in int64 */
static int number_int64(const number *nm, int64_t *out) {
    if (nm->has_exp || nm->flen || nm->ilen > 19) return -1;
    uint64_t v = 0;
    for (int k = 0; k < nm->ilen; k++) {
        uint64_t d = (uint64_t)(nm->ip[k] - '0');
        if (v > (UINT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    if (nm->neg) {
        if (v > (uint64_t)INT64_MAX + 1) return -1;
        *out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
    } else {
        if (v > (uint64_t)INT64_MAX) return -1;
        *out = (int64_t)v;
    }
    return 0;
}

static int skip_value(parser *P);

static int skip_container(parser *P, u8 open) {
    u8 close = open == '{' ? '}' : ']';
    if (++P->depth > 64) REFUSE(P, "nested too deeply");
    P->pos++;
    skip_ws(P);
    if (P->pos < P->end && P->b[P->pos] == close) {
        P->pos++;
        P->depth--;
        return 0;
    }
    for (;;) {
        if (open == '{') {
            if (P->pos >= P->end || P->b[P->pos] != '"') REFUSE(P, "expected a key");
            const u8 *s;
            uint32_t len;
            int esc;
            if (scan_string(P, &s, &len, &esc) < 0) return -1;
            skip_ws(P);
            if (P->pos >= P->end || P->b[P->pos] != ':') REFUSE(P, "expected ':'");
            P->pos++;
            skip_ws(P);
        }
        if (skip_value(P) < 0) return -1;
        skip_ws(P);
        if (P->pos >= P->end) REFUSE(P, "unterminated container");
        u8 c = P->b[P->pos];
        if (c == ',') {
            P->pos++;
            skip_ws(P);
            continue;
        }
        if (c == close) {
            P->pos++;
            P->depth--;
            return 0;
        }
        REFUSE(P, "expected ',' or a closing bracket");
    }
}

static int skip_literal(parser *P, const char *lit, size_t n) {
    if (P->end - P->pos < (Py_ssize_t)n || memcmp(P->b + P->pos, lit, n) != 0)
        REFUSE(P, "bad literal");
    P->pos += (Py_ssize_t)n;
    return 0;
}

/* any JSON value, validated, at P->pos (no leading whitespace) */
static int skip_value(parser *P) {
    if (P->pos >= P->end) REFUSE(P, "missing value");
    u8 c = P->b[P->pos];
    if (c == '"') {
        const u8 *s;
        uint32_t len;
        int esc;
        return scan_string(P, &s, &len, &esc);
    }
    if (c == '{' || c == '[') return skip_container(P, c);
    if (c == '-' || (c >= '0' && c <= '9')) {
        number nm;
        return scan_number(P, &nm);
    }
    if (c == 't') return skip_literal(P, "true", 4);
    if (c == 'f') return skip_literal(P, "false", 5);
    if (c == 'n') return skip_literal(P, "null", 4);
    REFUSE(P, "not a JSON value");
}

/* ------------------------------------------------------------------ events */

enum { V_ABSENT = 0, V_STRING, V_NUMBER, V_NULL, V_OBJECT, V_OTHER };

typedef struct {
    int kind;
    const u8 *s;
    uint32_t len;
    int esc;
    number num;
} value;

/* args ids (defaults as in the fast reader's _Args) */
enum { A_CORR, A_EXT, A_EXT_LEGACY, A_SEQ, A_TOTAL_ALLOC, A_TOTAL_RES, A_BYTES, A_DEV_TYPE,
       A_DEV_ID, A_ADDR, A_N };
static const char *ARG_KEYS[A_N] = {"correlation",     "External id",     "external id",
                                    "Sequence number", "Total Allocated", "Total Reserved",
                                    "Bytes",           "Device Type",     "Device Id",
                                    "Addr"};
static const int64_t ARG_DEFAULTS[A_N] = {-1, -1, -1, -1, -1, -1, 0, -1, -1, -1};

static int arg_key_of(const u8 *s, uint32_t len) {
    int k = -1;
    switch (len) { /* candidates by length and first letter, then one memcmp */
        case 4: k = A_ADDR; break;
        case 5: k = A_BYTES; break;
        case 9: k = A_DEV_ID; break;
        case 11:
            k = s[0] == 'c' ? A_CORR : s[0] == 'E' ? A_EXT : s[0] == 'e' ? A_EXT_LEGACY
                : A_DEV_TYPE;
            break;
        case 14: k = A_TOTAL_RES; break;
        case 15: k = s[0] == 'S' ? A_SEQ : A_TOTAL_ALLOC; break;
        default: return -1;
    }
    return memcmp(ARG_KEYS[k], s, len) == 0 ? k : -1;
}

/* an object key and the ':' after it (plain keys only: an escaped key is refused) */
static int parse_key(parser *P, const u8 **s, uint32_t *len) {
    if (P->pos >= P->end || P->b[P->pos] != '"') REFUSE(P, "expected a key");
    int esc;
    if (scan_string(P, s, len, &esc) < 0) return -1;
    if (esc) REFUSE(P, "escaped key");
    skip_ws(P);
    if (P->pos >= P->end || P->b[P->pos] != ':') REFUSE(P, "expected ':'");
    P->pos++;
    skip_ws(P);
    return 0;
}

static int parse_args(parser *P, int64_t *args) {
    unsigned seen = 0;
    if (++P->depth > 64) REFUSE(P, "nested too deeply");
    P->pos++;
    skip_ws(P);
    if (P->pos < P->end && P->b[P->pos] == '}') {
        P->pos++;
        P->depth--;
        return 0;
    }
    for (;;) {
        const u8 *s;
        uint32_t len;
        if (parse_key(P, &s, &len) < 0) return -1;
        int which = arg_key_of(s, len);
        if (which >= 0) {
            if (seen & (1u << which)) REFUSE(P, "duplicate args key");
            seen |= 1u << which;
            u8 c = P->pos < P->end ? P->b[P->pos] : 0;
            if (!(c == '-' || (c >= '0' && c <= '9'))) REFUSE(P, "args id is not a number");
            number nm;
            if (scan_number(P, &nm) < 0) return -1;
            if (number_int64(&nm, &args[which]) < 0) REFUSE(P, "args id is not an int64");
        } else if (skip_value(P) < 0) {
            return -1;
        }
        skip_ws(P);
        if (P->pos >= P->end) REFUSE(P, "unterminated args");
        u8 c = P->b[P->pos];
        if (c == ',') {
            P->pos++;
            skip_ws(P);
            continue;
        }
        if (c == '}') {
            P->pos++;
            P->depth--;
            return 0;
        }
        REFUSE(P, "expected ',' or '}'");
    }
}

enum { K_PH, K_NAME, K_CAT, K_PID, K_TID, K_TS, K_DUR, K_ARGS, K_N };

static int key_of(const u8 *s, uint32_t len) {
    switch (len) {
        case 2:
            if (s[0] == 'p' && s[1] == 'h') return K_PH;
            if (s[0] == 't' && s[1] == 's') return K_TS;
            return -1;
        case 3:
            if (!memcmp(s, "cat", 3)) return K_CAT;
            if (!memcmp(s, "pid", 3)) return K_PID;
            if (!memcmp(s, "tid", 3)) return K_TID;
            if (!memcmp(s, "dur", 3)) return K_DUR;
            return -1;
        case 4:
            if (!memcmp(s, "name", 4)) return K_NAME;
            if (!memcmp(s, "args", 4)) return K_ARGS;
            return -1;
        default:
            return -1;
    }
}

typedef struct {
    /* complete events */
    vec name, cat, pid, tid, ts, dur, corr, ext, seq, pid_str, tid_str;
    /* [memory] instants */
    vec m_ts, m_pid, m_tid, m_alloc, m_res, m_bytes, m_dtype, m_did, m_pid_str, m_tid_str, m_addr;
    interner names, cats, pids, tids, mpids, mtids;
} out;

#define N_VECS 22

static vec *out_vec(out *o, int k) {
    vec *all[N_VECS] = {&o->name, &o->cat, &o->pid, &o->tid, &o->ts, &o->dur, &o->corr,
                        &o->ext, &o->seq, &o->pid_str, &o->tid_str, &o->m_ts, &o->m_pid,
                        &o->m_tid, &o->m_alloc, &o->m_res, &o->m_bytes, &o->m_dtype,
                        &o->m_did, &o->m_pid_str, &o->m_tid_str, &o->m_addr};
    return all[k];
}

/* pid/tid: a plain int64, or a string (interned; *is_str = 1, *v = its code) */
static int id_value(parser *P, const value *v, interner *t, int64_t *out_v, int64_t *is_str) {
    if (v->kind == V_NUMBER) {
        if (number_int64(&v->num, out_v) < 0) REFUSE(P, "pid/tid is not an int64");
        *is_str = 0;
        return 0;
    }
    if (v->kind == V_STRING) {
        int32_t c = intern(t, v->s, v->len);
        if (c < 0) REFUSE(P, "out of memory");
        *out_v = c;
        *is_str = 1;
        return 0;
    }
    REFUSE(P, "pid/tid is not an int or a string");
}

static const char IGNORED_PH[] = "MCsftbneSTpFPONDRcVv()";

/* One event object at P->pos == '{'. Returns 0, -1 (refuse) or -2 (out of memory). */
static int parse_event(parser *P, out *o) {
    value f[K_N];
    int64_t args[A_N];
    memcpy(args, ARG_DEFAULTS, sizeof(args));
    for (int k = 0; k < K_N; k++) f[k].kind = V_ABSENT;
    P->depth = 1;
    P->pos++;
    skip_ws(P);
    if (P->pos < P->end && P->b[P->pos] == '}') REFUSE(P, "event without ph");
    for (;;) {
        const u8 *ks;
        uint32_t klen;
        if (parse_key(P, &ks, &klen) < 0) return -1;
        if (P->pos >= P->end) REFUSE(P, "missing value");
        int k = key_of(ks, klen);
        if (k < 0) {
            if (skip_value(P) < 0) return -1;
        } else {
            value *v = &f[k];
            if (v->kind != V_ABSENT) REFUSE(P, "duplicate key");
            u8 c = P->b[P->pos];
            if (c == '"') {
                v->kind = V_STRING;
                if (scan_string(P, &v->s, &v->len, &v->esc) < 0) return -1;
            } else if (c == '-' || (c >= '0' && c <= '9')) {
                v->kind = V_NUMBER;
                if (scan_number(P, &v->num) < 0) return -1;
            } else if (c == 'n') {
                v->kind = V_NULL;
                if (skip_literal(P, "null", 4) < 0) return -1;
            } else if (c == '{' && k == K_ARGS) {
                v->kind = V_OBJECT;
                if (parse_args(P, args) < 0) return -1;
            } else {
                v->kind = V_OTHER;
                if (skip_value(P) < 0) return -1;
            }
        }
        skip_ws(P);
        if (P->pos >= P->end) REFUSE(P, "unterminated event");
        u8 c = P->b[P->pos];
        if (c == ',') {
            P->pos++;
            skip_ws(P);
            continue;
        }
        if (c == '}') {
            P->pos++;
            break;
        }
        REFUSE(P, "expected ',' or '}'");
    }
    /* what the event is */
    value *ph = &f[K_PH];
    if (ph->kind != V_STRING || ph->esc || ph->len != 1) REFUSE(P, "ph is not a known tag");
    u8 tag = ph->s[0];
    if (tag != 'X' && tag != 'i' && tag != 'I') {
        if (tag == 'B' || tag == 'E' || !memchr(IGNORED_PH, tag, sizeof(IGNORED_PH) - 1))
            REFUSE(P, "ph is B/E or unknown");
        return 0; /* flows, metadata, counters ...: nothing to keep */
    }
    value *name = &f[K_NAME];
    if (name->kind != V_STRING) REFUSE(P, "name is not a string");
    if (f[K_ARGS].kind != V_ABSENT && f[K_ARGS].kind != V_NULL && f[K_ARGS].kind != V_OBJECT)
        REFUSE(P, "args is not an object");
    if (f[K_PID].kind == V_ABSENT || f[K_TID].kind == V_ABSENT) REFUSE(P, "pid/tid missing");
    if (f[K_TS].kind == V_ABSENT) REFUSE(P, "ts missing");
    if (tag == 'X') {
        value *cat = &f[K_CAT];
        if (cat->kind != V_ABSENT && cat->kind != V_STRING) REFUSE(P, "cat is not a string");
        if (f[K_TS].kind != V_NUMBER || f[K_DUR].kind != V_NUMBER) REFUSE(P, "ts/dur not numbers");
        int64_t ts, dur, pid, tid, pid_s, tid_s;
        if (number_us_to_ns(&f[K_TS].num, (uint64_t)1 << 53, &ts) < 0) REFUSE(P, "ts not plain");
        if (number_us_to_ns(&f[K_DUR].num, (uint64_t)1 << 33, &dur) < 0) REFUSE(P, "dur not plain");
        if (ts > ((int64_t)1 << 62) - dur) REFUSE(P, "time out of range");
        if (id_value(P, &f[K_PID], &o->pids, &pid, &pid_s) < 0) return -1;
        if (id_value(P, &f[K_TID], &o->tids, &tid, &tid_s) < 0) return -1;
        int32_t nc = intern(&o->names, name->s, name->len);
        int32_t cc = cat->kind == V_STRING ? intern(&o->cats, cat->s, cat->len)
                                           : intern(&o->cats, (const u8 *)"", 0);
        if (nc < 0 || cc < 0) return -2;
        int64_t ext = args[A_EXT] == -1 ? args[A_EXT_LEGACY] : args[A_EXT];
        PUSH(&o->name, nc);
        PUSH(&o->cat, cc);
        PUSH(&o->pid, pid);
        PUSH(&o->tid, tid);
        PUSH(&o->pid_str, pid_s);
        PUSH(&o->tid_str, tid_s);
        PUSH(&o->ts, ts);
        PUSH(&o->dur, dur);
        PUSH(&o->corr, args[A_CORR]);
        PUSH(&o->ext, ext);
        PUSH(&o->seq, args[A_SEQ]);
        return 0;
    }
    /* an instant: only [memory] is kept, the others just have to be well typed */
    if (name->esc) REFUSE(P, "escaped instant name");
    if (f[K_PID].kind != V_NUMBER && f[K_PID].kind != V_STRING) REFUSE(P, "pid not int/str");
    if (f[K_TID].kind != V_NUMBER && f[K_TID].kind != V_STRING) REFUSE(P, "tid not int/str");
    int is_memory = name->len == 8 && memcmp(name->s, "[memory]", 8) == 0;
    if (!is_memory) {
        int64_t tmp;
        if (f[K_PID].kind == V_NUMBER && number_int64(&f[K_PID].num, &tmp) < 0)
            REFUSE(P, "pid is not an int64");
        if (f[K_TID].kind == V_NUMBER && number_int64(&f[K_TID].num, &tmp) < 0)
            REFUSE(P, "tid is not an int64");
        return 0;
    }
    if (f[K_TS].kind != V_NUMBER) REFUSE(P, "memory ts is not a number");
    int64_t ts, pid, tid, pid_s, tid_s;
    if (number_us_to_ns(&f[K_TS].num, (uint64_t)1 << 53, &ts) < 0) REFUSE(P, "ts not plain");
    if (id_value(P, &f[K_PID], &o->mpids, &pid, &pid_s) < 0) return -1;
    if (id_value(P, &f[K_TID], &o->mtids, &tid, &tid_s) < 0) return -1;
    PUSH(&o->m_ts, ts);
    PUSH(&o->m_pid, pid);
    PUSH(&o->m_tid, tid);
    PUSH(&o->m_pid_str, pid_s);
    PUSH(&o->m_tid_str, tid_s);
    PUSH(&o->m_alloc, args[A_TOTAL_ALLOC]);
    PUSH(&o->m_res, args[A_TOTAL_RES]);
    PUSH(&o->m_bytes, args[A_BYTES]);
    PUSH(&o->m_dtype, args[A_DEV_TYPE]);
    PUSH(&o->m_did, args[A_DEV_ID]);
    PUSH(&o->m_addr, args[A_ADDR]);
    return 0;
}

/* value (',' value)* with optional whitespace; every value an event object */
static int parse_piece(parser *P, out *o) {
    skip_ws(P);
    if (P->pos >= P->end) return 0;
    for (;;) {
        if (P->b[P->pos] != '{') REFUSE(P, "not an event object");
        int r = parse_event(P, o);
        if (r < 0) return r;
        skip_ws(P);
        if (P->pos >= P->end) return 0;
        if (P->b[P->pos] != ',') REFUSE(P, "expected ',' between events");
        P->pos++;
        skip_ws(P);
        if (P->pos >= P->end) REFUSE(P, "trailing ','");
    }
}

/* ------------------------------------------------------------------ Python glue */

static PyObject *strings_list(interner *t) {
    PyObject *l = PyList_New(t->n);
    if (!l) return NULL;
    for (int32_t i = 0; i < t->n; i++) {
        PyObject *s = PyBytes_FromStringAndSize((const char *)t->up[i], t->ul[i]);
        if (!s) {
            Py_DECREF(l);
            return NULL;
        }
        PyList_SET_ITEM(l, i, s);
    }
    return l;
}

static void out_free(out *o) {
    for (int k = 0; k < N_VECS; k++) free(out_vec(o, k)->d);
    interner_free(&o->names);
    interner_free(&o->cats);
    interner_free(&o->pids);
    interner_free(&o->tids);
    interner_free(&o->mpids);
    interner_free(&o->mtids);
}

PyDoc_STRVAR(scan_doc,
"scan(buffer, start, stop) -> tuple | str\n\n"
"Scan buffer[start:stop] (events separated by commas). Returns (columns, strings):\n"
"columns = 22 bytes objects of native int64 (name, cat, pid, tid, ts_ns, dur_ns,\n"
"correlation, external_id, seq, pid_is_str, tid_is_str, then for [memory] instants\n"
"ts_ns, pid, tid, total_allocated, total_reserved, bytes, device_type, device_id,\n"
"pid_is_str, tid_is_str, addr); strings = 6 lists of raw JSON string contents in first-seen\n"
"order (names, cats, pid, tid, memory pid, memory tid texts). A str result is the\n"
"reason the piece was refused, with the byte offset.");

static PyObject *scan(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t start, stop;
    if (!PyArg_ParseTuple(args, "y*nn", &view, &start, &stop)) return NULL;
    if (start < 0 || stop > view.len || start > stop) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "start/stop outside the buffer");
        return NULL;
    }
    out o;
    memset(&o, 0, sizeof(o));
    if (interner_init(&o.names) || interner_init(&o.cats) || interner_init(&o.pids) ||
        interner_init(&o.tids) || interner_init(&o.mpids) || interner_init(&o.mtids)) {
        out_free(&o);
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    parser P = {(const u8 *)view.buf, start, stop, 0, NULL, 0};
    int r;
    Py_BEGIN_ALLOW_THREADS
    r = parse_piece(&P, &o);
    Py_END_ALLOW_THREADS
    PyObject *result = NULL;
    if (r == -2) {
        PyErr_NoMemory();
    } else if (r < 0) {
        result = PyUnicode_FromFormat("%s at byte %zd", P.why ? P.why : "refused", P.at);
    } else {
        PyObject *cols = PyTuple_New(N_VECS);
        PyObject *strs = PyTuple_New(6);
        int ok = cols && strs;
        for (int k = 0; ok && k < N_VECS; k++) {
            vec *v = out_vec(&o, k);
            PyObject *b = PyBytes_FromStringAndSize(v->d ? (const char *)v->d : "",
                                                    v->n * (Py_ssize_t)sizeof(int64_t));
            if (!b) ok = 0;
            else PyTuple_SET_ITEM(cols, k, b);
        }
        interner *ts[6] = {&o.names, &o.cats, &o.pids, &o.tids, &o.mpids, &o.mtids};
        for (int k = 0; ok && k < 6; k++) {
            PyObject *l = strings_list(ts[k]);
            if (!l) ok = 0;
            else PyTuple_SET_ITEM(strs, k, l);
        }
        if (ok) result = PyTuple_Pack(2, cols, strs);
        Py_XDECREF(cols);
        Py_XDECREF(strs);
    }
    out_free(&o);
    PyBuffer_Release(&view);
    return result;
}

/* ------------------------------------------------------------------ the event tree */

typedef struct {
    int64_t end, pos;
    Py_ssize_t up; /* nearest entry below with a later end (-1: none) */
    int32_t depth;
} entry;

typedef struct {
    entry *e;
    Py_ssize_t n, cap;
} stack;

PyDoc_STRVAR(tree_doc,
"tree(group, ts, end) -> (parent, depth)\n\n"
"The stack algorithm of NOTE [ Event tree rules ] (ckprof/trace/_build.py, _tree_loop)\n"
"over rows already sorted by (ts, -dur): group, ts, end are native int64 buffers of\n"
"equal length, group ids dense in [0, n). Returns bytes of int64 parent positions\n"
"(-1 for roots) and of int32 depths.");

static PyObject *tree(PyObject *self, PyObject *args) {
    Py_buffer g, t, e;
    if (!PyArg_ParseTuple(args, "y*y*y*", &g, &t, &e)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = g.len / (Py_ssize_t)sizeof(int64_t);
    if (t.len != g.len || e.len != g.len || g.len % (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "group, ts and end must be int64 of one length");
        goto done;
    }
    const int64_t *gp = (const int64_t *)g.buf, *tp = (const int64_t *)t.buf,
                  *ep = (const int64_t *)e.buf;
    int64_t ngroups = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (gp[i] < 0 || gp[i] >= n) {
            PyErr_SetString(PyExc_ValueError, "group ids must be dense in [0, n)");
            goto done;
        }
        if (gp[i] + 1 > ngroups) ngroups = gp[i] + 1;
    }
    PyObject *par_b = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(int64_t));
    PyObject *dep_b = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(int32_t));
    stack *stacks = (stack *)calloc(ngroups ? (size_t)ngroups : 1, sizeof(stack));
    if (!par_b || !dep_b || !stacks) {
        Py_XDECREF(par_b);
        Py_XDECREF(dep_b);
        free(stacks);
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto done;
    }
    int64_t *par = (int64_t *)PyBytes_AS_STRING(par_b);
    int32_t *dep = (int32_t *)PyBytes_AS_STRING(dep_b);
    int oom = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        stack *s = &stacks[gp[i]];
        int64_t t0 = tp[i], t1 = ep[i];
        while (s->n && s->e[s->n - 1].end <= t0) s->n--;
        par[i] = -1;
        dep[i] = 0;
        /* the innermost entry that encloses us: the topmost one ending at or after t1
           and after t0 (entries left under a partial overlap may have ended). Walking
           down by "up" skips runs that end earlier than the entry skipped from, so a
           staircase of partial overlaps costs O(1) per event, not O(stack). */
        int64_t need = t1 > t0 ? t1 : t0 + 1;
        Py_ssize_t k = s->n - 1;
        while (k >= 0 && s->e[k].end < need) k = s->e[k].up;
        if (k >= 0) {
            par[i] = s->e[k].pos;
            dep[i] = s->e[k].depth + 1;
        }
        Py_ssize_t up = k; /* for our own entry: the nearest below ending after t1 */
        while (up >= 0 && s->e[up].end <= t1) up = s->e[up].up;
        if (s->n == s->cap) {
            Py_ssize_t cap = s->cap ? s->cap * 2 : 16;
            entry *ne = (entry *)realloc(s->e, (size_t)cap * sizeof(entry));
            if (!ne) {
                oom = 1;
                break;
            }
            s->e = ne;
            s->cap = cap;
        }
        s->e[s->n].end = t1;
        s->e[s->n].pos = i;
        s->e[s->n].up = up;
        s->e[s->n].depth = dep[i];
        s->n++;
    }
    for (int64_t k = 0; k < ngroups; k++) free(stacks[k].e);
    free(stacks);
    Py_END_ALLOW_THREADS
    if (oom) {
        Py_DECREF(par_b);
        Py_DECREF(dep_b);
        PyErr_NoMemory();
        goto done;
    }
    result = PyTuple_Pack(2, par_b, dep_b);
    Py_DECREF(par_b);
    Py_DECREF(dep_b);
done:
    PyBuffer_Release(&g);
    PyBuffer_Release(&t);
    PyBuffer_Release(&e);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, scan_doc},
    {"tree", tree, METH_VARARGS, tree_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_scan",
    "Native field scanner for ckprof's fast trace reader (optional; pure Python otherwise).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__scan(void) { return PyModule_Create(&module); }
