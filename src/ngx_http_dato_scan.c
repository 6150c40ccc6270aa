
/*
 * Copyright (C) ngx_http_dato_module authors
 *
 * The parser's fast path: one pass over the body, no allocation but the
 * list of IDs, for the webhooks that are published or ignored.  It checks
 * the whole body as jansson would (grammar, UTF-8, escapes, duplicate
 * keys), and it gives up (NGX_HTTP_DATO_SCAN_DECLINED) on anything it is
 * not sure of: errors, escaped keys or IDs, big or exponent numbers, deep
 * nesting, many keys in open objects.  ngx_http_dato_parse() then hands
 * the body to jansson, which decides and words the error.  The fuzzer
 * checks that both agree whenever the fast path decides.
 *
 * The walk is one loop with its own stack of open containers rather than
 * a function per value: the position stays in a register, and a member
 * costs a few dozen instructions besides the bytes of its strings, which
 * are looked at 16 (SSE2) or 8 at a time.
 */


#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* the fuzzer builds the portable string scan too: NGX_HTTP_DATO_PORTABLE */

#if defined(__SSE2__) && defined(__GNUC__) && !defined(NGX_HTTP_DATO_PORTABLE)
#define NGX_HTTP_DATO_SSE2  1
#include <emmintrin.h>
#endif

#include "ngx_http_dato_parse.h"
#include "ngx_http_dato_valid.h"


/* open containers, and the keys of all open objects together */
#define NGX_HTTP_DATO_SCAN_DEPTH  32
#define NGX_HTTP_DATO_SCAN_KEYS   128

#define NGX_HTTP_DATO_ONES        0x0101010101010101ULL
#define NGX_HTTP_DATO_HIGHS       0x8080808080808080ULL


/* what a value is, for the parts of a payload that matter */
enum {
    NGX_HTTP_DATO_AT_NONE = 0,
    NGX_HTTP_DATO_AT_ROOT,
    NGX_HTTP_DATO_AT_ENTITY,
    NGX_HTTP_DATO_AT_DATA,
    NGX_HTTP_DATO_AT_RELATIONSHIPS,
    NGX_HTTP_DATO_AT_ITEMS,
    NGX_HTTP_DATO_AT_ITEM_LIST,
    NGX_HTTP_DATO_AT_ITEM,
    NGX_HTTP_DATO_AT_ID_LIST,
    NGX_HTTP_DATO_AT_ID,

    /* a value that is kept, with nothing inside it that matters */
    NGX_HTTP_DATO_AT_LEAF
};


/* a value seen: its first byte ('"', '{', '[', 't', 'f', 'n', digit) */
typedef struct {
    const unsigned char        *data;
    size_t                      len;
    int                         kind;
    int                         escaped;
} ngx_http_dato_tok_t;


typedef struct {
    ngx_http_dato_parse_str_t  *ids;
    size_t                      n;
    size_t                      size;
} ngx_http_dato_list_t;


/* an open object or array */
typedef struct {
    uint64_t                    seen;
    ngx_http_dato_parse_str_t  *keys;
    int                         at;
    int                         closer;
} ngx_http_dato_level_t;


typedef struct {
    ngx_http_dato_tok_t         entity_type;
    ngx_http_dato_tok_t         event_type;
    ngx_http_dato_tok_t         environment;
    ngx_http_dato_tok_t         primary;
    ngx_http_dato_tok_t         call_id;
    ngx_http_dato_tok_t         entity;
    ngx_http_dato_tok_t         entity_id;
    ngx_http_dato_tok_t         data;
    ngx_http_dato_tok_t         data_type;
    ngx_http_dato_tok_t         item_list;
    ngx_http_dato_tok_t         ids;

    /* the item being read in a bulk body, and an element of "ids" */
    ngx_http_dato_tok_t         item_type;
    ngx_http_dato_tok_t         item_id;
    ngx_http_dato_tok_t         id;

    ngx_http_dato_list_t        items;
    ngx_http_dato_list_t        list;

    /* the last string of ngx_http_dato_scan_string() had an escape */
    int                         escaped;
} ngx_http_dato_scan_t;


static int ngx_http_dato_scan_body(ngx_http_dato_scan_t *s,
    const unsigned char *p, const unsigned char *end);
static const unsigned char *ngx_http_dato_scan_string(
    ngx_http_dato_scan_t *s, const unsigned char *p,
    const unsigned char *safe, const unsigned char *last);
static const unsigned char *ngx_http_dato_scan_special(
    const unsigned char *p, const unsigned char *end);
static const unsigned char *ngx_http_dato_scan_number(
    const unsigned char *p);
static int ngx_http_dato_scan_trim(const unsigned char **start,
    const unsigned char **end);
static const unsigned char *ngx_http_dato_scan_word(const unsigned char *p,
    const unsigned char *last, const char *word, size_t len);
static int ngx_http_dato_scan_new_key(ngx_http_dato_level_t *top,
    ngx_http_dato_parse_str_t *key, const unsigned char *start,
    const unsigned char *p);
static int ngx_http_dato_scan_element(ngx_http_dato_scan_t *s, int at,
    ngx_http_dato_tok_t **slot);
static ngx_http_dato_tok_t *ngx_http_dato_scan_slot(ngx_http_dato_scan_t *s,
    int at, const unsigned char *key, size_t len, int *inner);
static int ngx_http_dato_scan_push(ngx_http_dato_list_t *list,
    ngx_http_dato_tok_t *id);
static int ngx_http_dato_tok_is(ngx_http_dato_tok_t *tok, const char *s,
    size_t len);
static int ngx_http_dato_scan_decide(ngx_http_dato_scan_t *s,
    unsigned events, size_t max_ids, ngx_http_dato_parse_result_t *res);


/* 1 for the bytes a string scan must stop at: controls, '"', '\', 8-bit */
static const unsigned char  ngx_http_dato_stop[256] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1
};


/*
 * Whitespace as jansson knows it.  The walk reads bytes without checking
 * for the end of the body: see ngx_http_dato_scan_body().
 */

#define ngx_http_dato_scan_ws(p)                                              \
    while (*p <= ' '                                                          \
           && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))          \
    {                                                                         \
        p++;                                                                  \
    }

#define ngx_http_dato_key_is(key, len, name)                                  \
    ((len) == sizeof(name) - 1 && (key)[0] == (name)[0]                       \
     && memcmp(key, name, sizeof(name) - 1) == 0)


int
ngx_http_dato_scan(const char *buf, size_t len, unsigned events,
    size_t max_ids, ngx_http_dato_parse_result_t *res)
{
    int                   rc;
    ngx_http_dato_scan_t  s;

    memset(&s, 0, sizeof(ngx_http_dato_scan_t));

    if (ngx_http_dato_scan_body(&s, (const unsigned char *) buf,
                                (const unsigned char *) buf + len))
    {
        rc = ngx_http_dato_scan_decide(&s, events, max_ids, res);

    } else {
        rc = NGX_HTTP_DATO_SCAN_DECLINED;
    }

    if (res->ids != s.items.ids) {
        free(s.items.ids);
    }

    if (res->ids != s.list.ids) {
        free(s.list.ids);
    }

    return rc;
}


/*
 * The first byte from p on that a string cannot simply go on with (a
 * control, '"', '\', an 8-bit byte), or last.  Up to safe, 16 bytes can
 * be read at once.
 */

static inline const unsigned char *
ngx_http_dato_scan_stop(const unsigned char *p, const unsigned char *safe,
    const unsigned char *last)
{
#if (NGX_HTTP_DATO_SSE2)

    int      mask;
    __m128i  v;

    /*
     * one signed compare catches the controls, '"' and the 8-bit bytes:
     * xor 2 turns '"' into ' ' and keeps the controls below it
     */

    while (p < safe) {
        v = _mm_loadu_si128((const __m128i *) p);

        mask = _mm_movemask_epi8(
                   _mm_or_si128(
                       _mm_cmpeq_epi8(v, _mm_set1_epi8('\\')),
                       _mm_cmpgt_epi8(_mm_set1_epi8(' ' + 1),
                                      _mm_xor_si128(v, _mm_set1_epi8(2)))));

        if (mask) {
            return p + __builtin_ctz(mask);
        }

        p += 16;
    }

#else

    uint64_t  x;

    /*
     * eight bytes at a time while none of them is a stop: the lowest stop
     * always shows in the mask (higher ones may show falsely, and are
     * looked at one by one below)
     */

    while (p < safe) {
        memcpy(&x, p, 8);

        x = ((x - NGX_HTTP_DATO_ONES * 0x20)
             | ((x ^ (NGX_HTTP_DATO_ONES * '"')) - NGX_HTTP_DATO_ONES)
             | ((x ^ (NGX_HTTP_DATO_ONES * '\\')) - NGX_HTTP_DATO_ONES)
             | x)
            & NGX_HTTP_DATO_HIGHS;

        if (x) {
#if defined(__GNUC__) && defined(__BYTE_ORDER__)                              \
    && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            p += __builtin_ctzll(x) / 8;
#endif
            break;
        }

        p += 8;
    }

#endif

    while (p < last && !ngx_http_dato_stop[*p]) {
        p++;
    }

    return p;
}


/*
 * The rest of a string whose scan stopped at something else than its
 * closing quote: escapes and UTF-8 are checked here, out of the walk's
 * way.  Returns the closing quote, or NULL; s->escaped tells whether the
 * string had an escape.
 */

static const unsigned char *
ngx_http_dato_scan_string(ngx_http_dato_scan_t *s, const unsigned char *p,
    const unsigned char *safe, const unsigned char *last)
{
    s->escaped = 0;

    for ( ;; ) {

        if (p == last) {
            return NULL;
        }

        if (*p == '"') {
            return p;
        }

        if (*p == '\\') {
            s->escaped = 1;
        }

        p = ngx_http_dato_scan_special(p, last);

        if (p == NULL) {
            return NULL;
        }

        p = ngx_http_dato_scan_stop(p, safe, last);
    }
}


/*
 * The walk: "value" reads one value, "next" what follows it in the open
 * container, "close" ends a container, "key" reads a member's key.  Any
 * doubt returns 0, and jansson decides.
 *
 * A payload is an object, so the last byte of the body that is not
 * whitespace ("last") must be a '}'.  Every byte the walk reads is then at
 * or before last: no scan goes past a '}' (whitespace, digits; a string
 * ends at last at the latest), and the one way past it, closing a
 * container, is checked.
 */

static int
ngx_http_dato_scan_body(ngx_http_dato_scan_t *s, const unsigned char *p,
    const unsigned char *end)
{
    int                         at, c, depth, escaped;
    size_t                      len;
    const unsigned char        *last, *safe, *start;
    ngx_http_dato_tok_t        *slot;
    ngx_http_dato_level_t      *top;
    ngx_http_dato_parse_str_t  *key;
    ngx_http_dato_level_t       stack[NGX_HTTP_DATO_SCAN_DEPTH];
    ngx_http_dato_parse_str_t   keys[NGX_HTTP_DATO_SCAN_KEYS];

    if (!ngx_http_dato_scan_trim(&p, &end)) {
        return 0;
    }

    last = end - 1;
    safe = (last - p > 16) ? last - 15 : p;

    top = NULL;
    depth = 0;
    key = keys;
    at = NGX_HTTP_DATO_AT_ROOT;
    slot = NULL;

value:

    ngx_http_dato_scan_ws(p);

    c = *p;

    if (at != NGX_HTTP_DATO_AT_NONE) {

        /* an item of a bulk body is an object, an element of "ids" a string */

        if ((at == NGX_HTTP_DATO_AT_ITEM && c != '{')
            || (at == NGX_HTTP_DATO_AT_ID && c != '"'))
        {
            return 0;
        }

        if (slot) {
            slot->data = p;
            slot->kind = c;
            slot->escaped = 0;
        }
    }

    switch (c) {

    case '"':
        start = ++p;

        p = ngx_http_dato_scan_stop(p, safe, last);
        escaped = 0;

        if (*p != '"') {
            p = ngx_http_dato_scan_string(s, p, safe, last);
            if (p == NULL) {
                return 0;
            }

            escaped = s->escaped;
        }

        if (slot) {
            slot->data = start;
            slot->len = p - start;
            slot->escaped = escaped;

            if (at == NGX_HTTP_DATO_AT_ID
                && !ngx_http_dato_scan_push(&s->list, slot))
            {
                return 0;
            }
        }

        p++;

        goto next;

    case '{':
    case '[':

        if (depth == NGX_HTTP_DATO_SCAN_DEPTH) {
            return 0;
        }

        top = &stack[depth++];
        top->at = at;
        top->closer = c + 2;  /* '{' + 2 is '}', '[' + 2 is ']' */

        if (c == '{') {
            top->seen = 0;
            top->keys = key;

            if (at == NGX_HTTP_DATO_AT_ITEM) {
                s->item_type.kind = 0;
                s->item_id.kind = 0;
            }
        }

        p++;

        ngx_http_dato_scan_ws(p);

        if (*p == top->closer) {
            p++;
            goto close;
        }

        if (c == '{') {
            goto key;
        }

        goto element;

    case 't':
        p = ngx_http_dato_scan_word(p, last, "true", 4);
        break;

    case 'f':
        p = ngx_http_dato_scan_word(p, last, "false", 5);
        break;

    case 'n':
        p = ngx_http_dato_scan_word(p, last, "null", 4);
        break;

    default:
        p = ngx_http_dato_scan_number(p);
    }

    if (p == NULL) {
        return 0;
    }

    if (slot) {
        slot->len = p - slot->data;
    }

next:

    if (*p <= ' ') {
        ngx_http_dato_scan_ws(p);
    }

    if (*p == ',') {
        p++;

        if (top->closer == '}') {
            goto key;
        }

        goto element;
    }

    if (*p != top->closer) {
        return 0;
    }

    p++;

close:

    if (top->closer == '}') {
        key = top->keys;

        /* {"type":"item","id":"..."}, else it is for jansson to word */

        if (top->at == NGX_HTTP_DATO_AT_ITEM
            && (!ngx_http_dato_tok_is(&s->item_type, "item", 4)
                || !ngx_http_dato_scan_push(&s->items, &s->item_id)))
        {
            return 0;
        }
    }

    if (--depth == 0) {

        /* the payload's end is the body's */
        return p == end;
    }

    if (p == end) {
        return 0;
    }

    top--;

    goto next;

element:

    at = ngx_http_dato_scan_element(s, top->at, &slot);

    goto value;

key:

    if (*p != '"') {
        ngx_http_dato_scan_ws(p);

        if (*p != '"') {
            return 0;
        }
    }

    start = ++p;

    p = ngx_http_dato_scan_stop(p, safe, last);

    if (*p != '"') {
        p = ngx_http_dato_scan_string(s, p, safe, last);

        /* an escaped key could repeat another one in a way jansson sees */

        if (p == NULL || s->escaped) {
            return 0;
        }
    }

    if (key == keys + NGX_HTTP_DATO_SCAN_KEYS
        || !ngx_http_dato_scan_new_key(top, key, start, p))
    {
        return 0;
    }

    len = p - start;

    key->data = (const char *) start;
    key->len = len;
    key++;

    p++;

    if (*p != ':') {
        ngx_http_dato_scan_ws(p);

        if (*p != ':') {
            return 0;
        }
    }

    p++;

    at = NGX_HTTP_DATO_AT_NONE;
    slot = NULL;

    if (top->at != NGX_HTTP_DATO_AT_NONE) {
        slot = ngx_http_dato_scan_slot(s, top->at, start, len, &at);

        /* a value that is only kept: "at" says "look at it" */

        if (slot && at == NGX_HTTP_DATO_AT_NONE) {
            at = NGX_HTTP_DATO_AT_LEAF;
        }
    }

    goto value;
}


/*
 * The body without the whitespace around it, which must be an object:
 * its first byte '{', its last '}'.
 */

static int
ngx_http_dato_scan_trim(const unsigned char **start, const unsigned char **end)
{
    const unsigned char  *p, *e;

    p = *start;
    e = *end;

    while (p < e && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) {
        p++;
    }

    while (e > p
           && (e[-1] == ' ' || e[-1] == '\n' || e[-1] == '\r'
               || e[-1] == '\t'))
    {
        e--;
    }

    *start = p;
    *end = e;

    return e - p >= 2 && *p == '{' && e[-1] == '}';
}


/* true, false or null: what follows it, or NULL */

static const unsigned char *
ngx_http_dato_scan_word(const unsigned char *p, const unsigned char *last,
    const char *word, size_t len)
{
    if (last - p < (ptrdiff_t) len || memcmp(p, word, len) != 0) {
        return NULL;
    }

    return p + len;
}


/*
 * Whether the key from start to p, its closing quote, is not one of the
 * keys of its object so far (top->keys up to "key").  A key is compared
 * with the others only when one of them has the same length and ends: a
 * 64-bit summary of the keys seen (p[-1] is the last byte of the key, or
 * the opening quote).
 */

static int
ngx_http_dato_scan_new_key(ngx_http_dato_level_t *top,
    ngx_http_dato_parse_str_t *key, const unsigned char *start,
    const unsigned char *p)
{
    size_t                      len;
    uint64_t                    bit;
    ngx_http_dato_parse_str_t  *k;

    len = p - start;
    bit = (uint64_t) 1 << ((len * 7 + *start + p[-1]) & 63);

    if (top->seen & bit) {
        for (k = top->keys; k < key; k++) {
            if (k->len == len && memcmp(k->data, start, len) == 0) {
                return 0;
            }
        }
    }

    top->seen |= bit;

    return 1;
}


/* what an array's element is, and where it goes (*slot) */

static int
ngx_http_dato_scan_element(ngx_http_dato_scan_t *s, int at,
    ngx_http_dato_tok_t **slot)
{
    switch (at) {

    case NGX_HTTP_DATO_AT_ITEM_LIST:
        *slot = NULL;
        return NGX_HTTP_DATO_AT_ITEM;

    case NGX_HTTP_DATO_AT_ID_LIST:
        *slot = &s->id;
        return NGX_HTTP_DATO_AT_ID;

    default:
        *slot = NULL;
        return NGX_HTTP_DATO_AT_NONE;
    }
}


/* where a key's value goes, and what it is for the values inside it */

static ngx_http_dato_tok_t *
ngx_http_dato_scan_slot(ngx_http_dato_scan_t *s, int at,
    const unsigned char *key, size_t len, int *inner)
{
    switch (at) {

    case NGX_HTTP_DATO_AT_ROOT:

        if (ngx_http_dato_key_is(key, len, "entity_type")) {
            return &s->entity_type;
        }

        if (ngx_http_dato_key_is(key, len, "event_type")) {
            return &s->event_type;
        }

        if (ngx_http_dato_key_is(key, len, "environment")) {
            return &s->environment;
        }

        if (ngx_http_dato_key_is(key, len, "is_environment_primary")) {
            return &s->primary;
        }

        if (ngx_http_dato_key_is(key, len, "webhook_call_id")) {
            return &s->call_id;
        }

        if (ngx_http_dato_key_is(key, len, "entity")) {
            *inner = NGX_HTTP_DATO_AT_ENTITY;
            return &s->entity;
        }

        if (ngx_http_dato_key_is(key, len, "data")) {
            *inner = NGX_HTTP_DATO_AT_DATA;
            return &s->data;
        }

        if (ngx_http_dato_key_is(key, len, "ids")) {
            *inner = NGX_HTTP_DATO_AT_ID_LIST;
            return &s->ids;
        }

        return NULL;

    case NGX_HTTP_DATO_AT_ENTITY:
        return ngx_http_dato_key_is(key, len, "id") ? &s->entity_id : NULL;

    case NGX_HTTP_DATO_AT_DATA:

        if (ngx_http_dato_key_is(key, len, "type")) {
            return &s->data_type;
        }

        if (ngx_http_dato_key_is(key, len, "relationships")) {
            *inner = NGX_HTTP_DATO_AT_RELATIONSHIPS;
        }

        return NULL;

    case NGX_HTTP_DATO_AT_RELATIONSHIPS:

        if (ngx_http_dato_key_is(key, len, "items")) {
            *inner = NGX_HTTP_DATO_AT_ITEMS;
        }

        return NULL;

    case NGX_HTTP_DATO_AT_ITEMS:

        if (ngx_http_dato_key_is(key, len, "data")) {
            *inner = NGX_HTTP_DATO_AT_ITEM_LIST;
            return &s->item_list;
        }

        return NULL;

    case NGX_HTTP_DATO_AT_ITEM:

        if (ngx_http_dato_key_is(key, len, "type")) {
            return &s->item_type;
        }

        if (ngx_http_dato_key_is(key, len, "id")) {
            return &s->item_id;
        }

        return NULL;

    default:
        return NULL;
    }
}


/*
 * What a string scan stopped at, as jansson takes it: known escapes,
 * paired surrogates, no \u0000, and valid UTF-8 (no overlong forms, no
 * encoded surrogates, nothing past U+10FFFF); a control is an error.
 * Returns what follows, or NULL.
 */

static const unsigned char *
ngx_http_dato_scan_special(const unsigned char *p, const unsigned char *end)
{
    int           i, n;
    unsigned int  cp, lo;

    if (*p == '\\') {

        if (end - p < 2) {
            return NULL;
        }

        switch (p[1]) {
        case '"': case '\\': case '/': case 'b':
        case 'f': case 'n': case 'r': case 't':
            return p + 2;

        case 'u':
            break;

        default:
            return NULL;
        }

        cp = 0;

        for (i = 0; i < 2; i++) {
            if (end - p < 6 || p[0] != '\\' || p[1] != 'u') {
                return NULL;
            }

            lo = 0;

            for (n = 2; n < 6; n++) {
                lo <<= 4;

                if (p[n] >= '0' && p[n] <= '9') {
                    lo |= p[n] - '0';

                } else if ((p[n] | 0x20) >= 'a' && (p[n] | 0x20) <= 'f') {
                    lo |= (p[n] | 0x20) - 'a' + 10;

                } else {
                    return NULL;
                }
            }

            p += 6;

            if (i == 0) {
                cp = lo;

                if (cp < 0xd800 || cp > 0xdbff) {
                    break;
                }

            } else if (lo < 0xdc00 || lo > 0xdfff) {
                return NULL;
            }
        }

        if (cp == 0 || (cp >= 0xdc00 && cp <= 0xdfff)) {
            return NULL;
        }

        return p;
    }

    /* 8-bit: one UTF-8 sequence */

    if (*p >= 0xc2 && *p <= 0xdf) {
        n = 1;
        cp = *p & 0x1f;

    } else if (*p >= 0xe0 && *p <= 0xef) {
        n = 2;
        cp = *p & 0x0f;

    } else if (*p >= 0xf0 && *p <= 0xf4) {
        n = 3;
        cp = *p & 0x07;

    } else {

        /* a control, or no UTF-8 lead byte */
        return NULL;
    }

    if (end - p <= n) {
        return NULL;
    }

    for (i = 1; i <= n; i++) {
        if ((p[i] & 0xc0) != 0x80) {
            return NULL;
        }

        cp = (cp << 6) | (p[i] & 0x3f);
    }

    if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000)
        || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
    {
        return NULL;
    }

    return p + n + 1;
}


/*
 * -?(0|[1-9][0-9]*)(.[0-9]+)?, and short: exponents and long numbers
 * are for jansson, which refuses what does not fit a long long or double
 */

static const unsigned char *
ngx_http_dato_scan_number(const unsigned char *p)
{
    const unsigned char  *start;

    start = p;

    if (*p == '-') {
        p++;
    }

    if (*p < '0' || *p > '9') {
        return NULL;
    }

    if (*p == '0') {
        p++;

    } else {
        while (*p >= '0' && *p <= '9') {
            p++;
        }
    }

    if (*p == '.') {
        p++;

        if (*p < '0' || *p > '9') {
            return NULL;
        }

        while (*p >= '0' && *p <= '9') {
            p++;
        }
    }

    if (*p == 'e' || *p == 'E' || p - start > 15) {
        return NULL;
    }

    return p;
}


/* an ID for a list: an unescaped, valid DatoCMS ID, else jansson decides */

static int
ngx_http_dato_scan_push(ngx_http_dato_list_t *list, ngx_http_dato_tok_t *id)
{
    size_t                      size;
    ngx_http_dato_parse_str_t  *ids;

    if (id->kind != '"' || id->escaped
        || !ngx_http_dato_valid_id((const char *) id->data, id->len))
    {
        return 0;
    }

    if (list->n == list->size) {
        size = list->size ? list->size * 2 : 16;

        ids = realloc(list->ids, size * sizeof(ngx_http_dato_parse_str_t));
        if (ids == NULL) {
            return 0;
        }

        list->ids = ids;
        list->size = size;
    }

    list->ids[list->n].data = (const char *) id->data;
    list->ids[list->n].len = id->len;
    list->n++;

    return 1;
}


static int
ngx_http_dato_tok_is(ngx_http_dato_tok_t *tok, const char *s, size_t len)
{
    return tok->kind == '"' && !tok->escaped && tok->len == len
           && memcmp(tok->data, s, len) == 0;
}

/* the jansson path's choices, for the answers that are not errors */

static int
ngx_http_dato_scan_decide(ngx_http_dato_scan_t *s, unsigned events,
    size_t max_ids, ngx_http_dato_parse_result_t *res)
{
    ngx_http_dato_list_t  *list;

    if (s->entity_type.kind || s->event_type.kind) {

        if (s->entity_type.kind != '"' || s->entity_type.escaped
            || s->event_type.kind != '"' || s->event_type.escaped)
        {
            return NGX_HTTP_DATO_SCAN_DECLINED;
        }

        if (ngx_http_dato_ignored(res, (const char *) s->entity_type.data,
                                  s->entity_type.len,
                                  (const char *) s->event_type.data,
                                  s->event_type.len, events))
        {
            return res->status;
        }

        if (s->entity.kind != '{' || s->entity_id.kind != '"'
            || s->entity_id.escaped
            || !ngx_http_dato_valid_id((const char *) s->entity_id.data,
                                       s->entity_id.len))
        {
            return NGX_HTTP_DATO_SCAN_DECLINED;
        }

        if (s->primary.kind == 'f') {
            if (s->environment.kind != '"' || s->environment.escaped
                || !ngx_http_dato_valid_env(
                       (const char *) s->environment.data,
                       s->environment.len))
            {
                return NGX_HTTP_DATO_SCAN_DECLINED;
            }

            res->environment.data = (const char *) s->environment.data;
            res->environment.len = s->environment.len;
        }

        /* an escaped one is left to jansson, which decodes it */

        if (s->call_id.kind == '"' && s->call_id.escaped) {
            return NGX_HTTP_DATO_SCAN_DECLINED;
        }

        if (s->call_id.kind == '"'
            && ngx_http_dato_valid_word((const char *) s->call_id.data,
                                        s->call_id.len))
        {
            res->call_id.data = (const char *) s->call_id.data;
            res->call_id.len = s->call_id.len;
        }

        res->id.data = (const char *) s->entity_id.data;
        res->id.len = s->entity_id.len;
        res->ids = &res->id;
        res->nids = 1;

        goto publish;
    }

    if (s->data.kind) {
        if (s->data.kind != '{'
            || !ngx_http_dato_tok_is(&s->data_type,
                                     "item_bulk_publish_operation", 27)
            || s->item_list.kind != '[')
        {
            return NGX_HTTP_DATO_SCAN_DECLINED;
        }

        list = &s->items;

    } else if (s->ids.kind == '[') {
        list = &s->list;

    } else if (s->ids.kind == '"') {

        /* "ids": "X9_l7IdvRq26r7e2wn353Q", one ID as it is */

        if (s->ids.escaped
            || !ngx_http_dato_valid_id((const char *) s->ids.data,
                                       s->ids.len))
        {
            return NGX_HTTP_DATO_SCAN_DECLINED;
        }

        s->list.n = 0;

        if (!ngx_http_dato_scan_push(&s->list, &s->ids)) {
            return NGX_HTTP_DATO_SCAN_DECLINED;
        }

        list = &s->list;

    } else {
        return NGX_HTTP_DATO_SCAN_DECLINED;
    }

    if (list->n == 0) {
        return NGX_HTTP_DATO_SCAN_DECLINED;
    }

    res->ids = list->ids;
    res->nids = list->n;

publish:

    if (max_ids && res->nids > max_ids) {

        /* the jansson path words the 413 (the lists are freed by the caller) */

        res->ids = NULL;
        res->nids = 0;
        res->environment.data = NULL;
        res->environment.len = 0;
        res->call_id.data = NULL;
        res->call_id.len = 0;

        return NGX_HTTP_DATO_SCAN_DECLINED;
    }

    res->status = NGX_HTTP_DATO_PARSE_PUBLISH;

    return res->status;
}
