
/*
 * Copyright (C) ngx_http_dato_module authors
 *
 * The parser's fast path: one pass over the body, no allocation but the
 * list of IDs, for the webhooks that are published or ignored.  It checks
 * the whole body as jansson would (grammar, UTF-8, escapes, duplicate
 * keys), and it gives up (NGX_HTTP_DATO_SCAN_DECLINED) on anything it is
 * not sure of: errors, escaped keys or IDs, big or exponent numbers, deep
 * nesting, objects with many keys.  ngx_http_dato_parse() then hands the
 * body to jansson, which decides and words the error.  The fuzzer checks
 * that both agree whenever the fast path decides.
 */


#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ngx_http_dato_parse.h"


#define NGX_HTTP_DATO_SCAN_DEPTH  32
#define NGX_HTTP_DATO_SCAN_KEYS   64

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
    NGX_HTTP_DATO_AT_ID_LIST
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


typedef struct {
    const unsigned char        *p;
    const unsigned char        *end;
    int                         depth;
    int                         failed;

    ngx_http_dato_tok_t         entity_type;
    ngx_http_dato_tok_t         event_type;
    ngx_http_dato_tok_t         environment;
    ngx_http_dato_tok_t         primary;
    ngx_http_dato_tok_t         entity;
    ngx_http_dato_tok_t         entity_id;
    ngx_http_dato_tok_t         data;
    ngx_http_dato_tok_t         data_type;
    ngx_http_dato_tok_t         item_list;
    ngx_http_dato_tok_t         ids;

    /* the item being read in a bulk body */
    ngx_http_dato_tok_t         item_type;
    ngx_http_dato_tok_t         item_id;

    ngx_http_dato_list_t        items;
    ngx_http_dato_list_t        list;
} ngx_http_dato_scan_t;


static void ngx_http_dato_scan_value(ngx_http_dato_scan_t *s, int at,
    ngx_http_dato_tok_t *tok);
static void ngx_http_dato_scan_object(ngx_http_dato_scan_t *s, int at);
static void ngx_http_dato_scan_array(ngx_http_dato_scan_t *s, int at);
static int ngx_http_dato_scan_next(ngx_http_dato_scan_t *s, int closer);
static void ngx_http_dato_scan_string(ngx_http_dato_scan_t *s,
    ngx_http_dato_tok_t *tok);
static void ngx_http_dato_scan_number(ngx_http_dato_scan_t *s);
static void ngx_http_dato_scan_literal(ngx_http_dato_scan_t *s,
    const char *word, size_t len);
static ngx_http_dato_tok_t *ngx_http_dato_scan_slot(ngx_http_dato_scan_t *s,
    int at, ngx_http_dato_tok_t *key, int *inner);
static void ngx_http_dato_scan_push(ngx_http_dato_scan_t *s,
    ngx_http_dato_list_t *list, ngx_http_dato_tok_t *id);
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


/* whitespace is at most ' ': most bytes are out at the first compare */

#define ngx_http_dato_scan_ws(s)                                              \
    while ((s)->p < (s)->end && *(s)->p <= ' '                                \
           && (*(s)->p == ' ' || *(s)->p == '\n' || *(s)->p == '\r'           \
               || *(s)->p == '\t'))                                           \
    {                                                                         \
        (s)->p++;                                                             \
    }


int
ngx_http_dato_scan(const char *buf, size_t len, unsigned events,
    size_t max_ids, ngx_http_dato_parse_result_t *res)
{
    int                    rc;
    ngx_http_dato_scan_t   s;
    ngx_http_dato_tok_t    root;

    memset(&s, 0, sizeof(ngx_http_dato_scan_t));

    s.p = (const unsigned char *) buf;
    s.end = s.p + len;

    ngx_http_dato_scan_ws(&s);

    if (s.p == s.end || *s.p != '{') {
        return NGX_HTTP_DATO_SCAN_DECLINED;
    }

    ngx_http_dato_scan_value(&s, NGX_HTTP_DATO_AT_ROOT, &root);

    ngx_http_dato_scan_ws(&s);

    if (s.failed || s.p != s.end) {
        rc = NGX_HTTP_DATO_SCAN_DECLINED;

    } else {
        rc = ngx_http_dato_scan_decide(&s, events, max_ids, res);
    }

    if (res->ids != s.items.ids) {
        free(s.items.ids);
    }

    if (res->ids != s.list.ids) {
        free(s.list.ids);
    }

    return rc;
}


static void
ngx_http_dato_scan_value(ngx_http_dato_scan_t *s, int at,
    ngx_http_dato_tok_t *tok)
{
    ngx_http_dato_scan_ws(s);

    if (s->p == s->end) {
        s->failed = 1;
        return;
    }

    tok->data = s->p;
    tok->kind = *s->p;
    tok->escaped = 0;

    switch (*s->p) {

    case '{':
        ngx_http_dato_scan_object(s, at);
        break;

    case '[':
        ngx_http_dato_scan_array(s, at);
        break;

    case '"':
        ngx_http_dato_scan_string(s, tok);
        return;

    case 't':
        ngx_http_dato_scan_literal(s, "true", 4);
        break;

    case 'f':
        ngx_http_dato_scan_literal(s, "false", 5);
        break;

    case 'n':
        ngx_http_dato_scan_literal(s, "null", 4);
        break;

    default:
        ngx_http_dato_scan_number(s);
    }

    tok->len = s->p - tok->data;
}


static void
ngx_http_dato_scan_object(ngx_http_dato_scan_t *s, int at)
{
    int                   inner, nkeys, i;
    uint64_t              seen, bit;
    ngx_http_dato_tok_t   key, value, *slot;
    ngx_http_dato_tok_t   keys[NGX_HTTP_DATO_SCAN_KEYS];

    if (++s->depth > NGX_HTTP_DATO_SCAN_DEPTH) {
        s->failed = 1;
        return;
    }

    if (at == NGX_HTTP_DATO_AT_ITEM) {
        s->item_type.kind = 0;
        s->item_id.kind = 0;
    }

    s->p++;
    nkeys = 0;
    seen = 0;

    ngx_http_dato_scan_ws(s);

    if (s->p < s->end && *s->p == '}') {
        s->p++;
        goto done;
    }

    for ( ;; ) {
        ngx_http_dato_scan_ws(s);

        if (s->p == s->end || *s->p != '"') {
            s->failed = 1;
            return;
        }

        ngx_http_dato_scan_string(s, &key);

        /* an escaped key could repeat another one in a way jansson sees */

        if (s->failed || key.escaped || nkeys == NGX_HTTP_DATO_SCAN_KEYS) {
            s->failed = 1;
            return;
        }

        /*
         * a key is compared with the others only when one of them has the
         * same length and ends: a 64-bit summary of the keys seen
         */

        bit = (uint64_t) 1 << ((key.len * 7
                                + (key.len ? key.data[0] + key.data[key.len - 1]
                                           : 0))
                               & 63);

        if (seen & bit) {
            for (i = 0; i < nkeys; i++) {
                if (keys[i].len == key.len
                    && memcmp(keys[i].data, key.data, key.len) == 0)
                {
                    s->failed = 1;
                    return;
                }
            }
        }

        seen |= bit;

        keys[nkeys++] = key;

        ngx_http_dato_scan_ws(s);

        if (s->p == s->end || *s->p != ':') {
            s->failed = 1;
            return;
        }

        s->p++;

        slot = ngx_http_dato_scan_slot(s, at, &key, &inner);

        ngx_http_dato_scan_value(s, inner, slot ? slot : &value);

        if (!ngx_http_dato_scan_next(s, '}')) {
            break;
        }
    }

    if (s->failed) {
        return;
    }

done:

    s->depth--;

    if (at == NGX_HTTP_DATO_AT_ITEM) {

        /* {"type":"item","id":"..."}, else it is for jansson to word */

        if (!ngx_http_dato_tok_is(&s->item_type, "item", 4)) {
            s->failed = 1;
            return;
        }

        ngx_http_dato_scan_push(s, &s->items, &s->item_id);
    }
}


/* where a key's value goes, and what it is for the values inside it */

static ngx_http_dato_tok_t *
ngx_http_dato_scan_slot(ngx_http_dato_scan_t *s, int at,
    ngx_http_dato_tok_t *key, int *inner)
{
    *inner = NGX_HTTP_DATO_AT_NONE;

    switch (at) {

    case NGX_HTTP_DATO_AT_ROOT:

        if (ngx_http_dato_tok_is(key, "entity_type", 11)) {
            return &s->entity_type;
        }

        if (ngx_http_dato_tok_is(key, "event_type", 10)) {
            return &s->event_type;
        }

        if (ngx_http_dato_tok_is(key, "environment", 11)) {
            return &s->environment;
        }

        if (ngx_http_dato_tok_is(key, "is_environment_primary", 22)) {
            return &s->primary;
        }

        if (ngx_http_dato_tok_is(key, "entity", 6)) {
            *inner = NGX_HTTP_DATO_AT_ENTITY;
            return &s->entity;
        }

        if (ngx_http_dato_tok_is(key, "data", 4)) {
            *inner = NGX_HTTP_DATO_AT_DATA;
            return &s->data;
        }

        if (ngx_http_dato_tok_is(key, "ids", 3)) {
            *inner = NGX_HTTP_DATO_AT_ID_LIST;
            return &s->ids;
        }

        return NULL;

    case NGX_HTTP_DATO_AT_ENTITY:
        return ngx_http_dato_tok_is(key, "id", 2) ? &s->entity_id : NULL;

    case NGX_HTTP_DATO_AT_DATA:

        if (ngx_http_dato_tok_is(key, "type", 4)) {
            return &s->data_type;
        }

        if (ngx_http_dato_tok_is(key, "relationships", 13)) {
            *inner = NGX_HTTP_DATO_AT_RELATIONSHIPS;
        }

        return NULL;

    case NGX_HTTP_DATO_AT_RELATIONSHIPS:

        if (ngx_http_dato_tok_is(key, "items", 5)) {
            *inner = NGX_HTTP_DATO_AT_ITEMS;
        }

        return NULL;

    case NGX_HTTP_DATO_AT_ITEMS:

        if (ngx_http_dato_tok_is(key, "data", 4)) {
            *inner = NGX_HTTP_DATO_AT_ITEM_LIST;
            return &s->item_list;
        }

        return NULL;

    case NGX_HTTP_DATO_AT_ITEM:

        if (ngx_http_dato_tok_is(key, "type", 4)) {
            return &s->item_type;
        }

        if (ngx_http_dato_tok_is(key, "id", 2)) {
            return &s->item_id;
        }

        return NULL;

    default:
        return NULL;
    }
}


static void
ngx_http_dato_scan_array(ngx_http_dato_scan_t *s, int at)
{
    int                   inner;
    ngx_http_dato_tok_t   value;

    if (++s->depth > NGX_HTTP_DATO_SCAN_DEPTH) {
        s->failed = 1;
        return;
    }

    inner = (at == NGX_HTTP_DATO_AT_ITEM_LIST) ? NGX_HTTP_DATO_AT_ITEM
                                               : NGX_HTTP_DATO_AT_NONE;

    s->p++;

    ngx_http_dato_scan_ws(s);

    if (s->p < s->end && *s->p == ']') {
        s->p++;
        s->depth--;
        return;
    }

    for ( ;; ) {
        ngx_http_dato_scan_value(s, inner, &value);

        if (s->failed) {
            return;
        }

        if (at == NGX_HTTP_DATO_AT_ID_LIST) {
            ngx_http_dato_scan_push(s, &s->list, &value);
        }

        if (at == NGX_HTTP_DATO_AT_ITEM_LIST && value.kind != '{') {
            s->failed = 1;
            return;
        }

        if (!ngx_http_dato_scan_next(s, ']')) {
            break;
        }
    }

    if (s->failed) {
        return;
    }

    s->depth--;
}


/* after a member: 1 when a ',' says more follow, 0 at the closer or fails */

static int
ngx_http_dato_scan_next(ngx_http_dato_scan_t *s, int closer)
{
    if (s->failed) {
        return 0;
    }

    ngx_http_dato_scan_ws(s);

    if (s->p < s->end && *s->p == ',') {
        s->p++;
        return 1;
    }

    if (s->p < s->end && *s->p == closer) {
        s->p++;
        return 0;
    }

    s->failed = 1;

    return 0;
}


/*
 * A string as jansson takes it: no control characters, known escapes,
 * paired surrogates, no \u0000, and valid UTF-8 (no overlong forms, no
 * encoded surrogates, nothing past U+10FFFF).
 */

static void
ngx_http_dato_scan_string(ngx_http_dato_scan_t *s, ngx_http_dato_tok_t *tok)
{
    int                   i, n;
    uint64_t              x;
    unsigned int          cp, lo;
    const unsigned char  *p, *end;

    p = s->p + 1;
    end = s->end;

    tok->kind = '"';
    tok->escaped = 0;

    for ( ;; ) {

        /*
         * eight bytes at a time while none of them is a control, '"',
         * '\' or 8-bit: the lowest such byte always shows in the mask
         * (higher ones may show falsely, and are looked at one by one)
         */

        while (end - p >= 8) {
            memcpy(&x, p, 8);

            x = ((x - NGX_HTTP_DATO_ONES * 0x20)
                 | ((x ^ (NGX_HTTP_DATO_ONES * '"')) - NGX_HTTP_DATO_ONES)
                 | ((x ^ (NGX_HTTP_DATO_ONES * '\\')) - NGX_HTTP_DATO_ONES)
                 | x)
                & NGX_HTTP_DATO_HIGHS;

            if (x) {
#if defined(__GNUC__) && defined(__BYTE_ORDER__)                              \
    && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
                /* the lowest flag is the first byte to look at, exactly */
                p += __builtin_ctzll(x) / 8;
#endif
                break;
            }

            p += 8;
        }

        while (p < end && !ngx_http_dato_stop[*p]) {
            p++;
        }

        if (p == end || *p < 0x20) {
            s->failed = 1;
            return;
        }

        if (*p == '"') {
            break;
        }

        if (*p == '\\') {
            tok->escaped = 1;

            if (end - p < 2) {
                s->failed = 1;
                return;
            }

            switch (p[1]) {
            case '"': case '\\': case '/': case 'b':
            case 'f': case 'n': case 'r': case 't':
                p += 2;
                continue;

            case 'u':
                break;

            default:
                s->failed = 1;
                return;
            }

            cp = 0;

            for (i = 0; i < 2; i++) {
                if (end - p < 6 || p[0] != '\\' || p[1] != 'u') {
                    s->failed = 1;
                    return;
                }

                lo = 0;

                for (n = 2; n < 6; n++) {
                    lo <<= 4;

                    if (p[n] >= '0' && p[n] <= '9') {
                        lo |= p[n] - '0';

                    } else if ((p[n] | 0x20) >= 'a' && (p[n] | 0x20) <= 'f') {
                        lo |= (p[n] | 0x20) - 'a' + 10;

                    } else {
                        s->failed = 1;
                        return;
                    }
                }

                p += 6;

                if (i == 0) {
                    cp = lo;

                    if (cp < 0xd800 || cp > 0xdbff) {
                        break;
                    }

                } else if (lo < 0xdc00 || lo > 0xdfff) {
                    s->failed = 1;
                    return;
                }
            }

            if (cp == 0 || (cp >= 0xdc00 && cp <= 0xdfff)) {
                s->failed = 1;
                return;
            }

            continue;
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
            s->failed = 1;
            return;
        }

        if (end - p <= n) {
            s->failed = 1;
            return;
        }

        for (i = 1; i <= n; i++) {
            if ((p[i] & 0xc0) != 0x80) {
                s->failed = 1;
                return;
            }

            cp = (cp << 6) | (p[i] & 0x3f);
        }

        if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000)
            || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        {
            s->failed = 1;
            return;
        }

        p += n + 1;
    }

    tok->data = s->p + 1;
    tok->len = p - tok->data;

    s->p = p + 1;
}


/*
 * -?(0|[1-9][0-9]*)(.[0-9]+)?, and short: exponents and long numbers
 * are for jansson, which refuses what does not fit a long long or double
 */

static void
ngx_http_dato_scan_number(ngx_http_dato_scan_t *s)
{
    const unsigned char  *p, *start;

    p = s->p;
    start = p;

    if (p < s->end && *p == '-') {
        p++;
    }

    if (p == s->end || *p < '0' || *p > '9') {
        s->failed = 1;
        return;
    }

    if (*p == '0') {
        p++;

    } else {
        while (p < s->end && *p >= '0' && *p <= '9') {
            p++;
        }
    }

    if (p < s->end && *p == '.') {
        p++;

        if (p == s->end || *p < '0' || *p > '9') {
            s->failed = 1;
            return;
        }

        while (p < s->end && *p >= '0' && *p <= '9') {
            p++;
        }
    }

    if ((p < s->end && (*p == 'e' || *p == 'E')) || p - start > 15) {
        s->failed = 1;
        return;
    }

    s->p = p;
}


static void
ngx_http_dato_scan_literal(ngx_http_dato_scan_t *s, const char *word,
    size_t len)
{
    if ((size_t) (s->end - s->p) < len || memcmp(s->p, word, len) != 0) {
        s->failed = 1;
        return;
    }

    s->p += len;
}


/* an ID for a list: an unescaped, valid DatoCMS ID, else jansson decides */

static void
ngx_http_dato_scan_push(ngx_http_dato_scan_t *s, ngx_http_dato_list_t *list,
    ngx_http_dato_tok_t *id)
{
    size_t                      size;
    ngx_http_dato_parse_str_t  *ids;

    if (s->failed) {
        return;
    }

    if (id->kind != '"' || id->escaped
        || !ngx_http_dato_valid_id((const char *) id->data, id->len))
    {
        s->failed = 1;
        return;
    }

    if (list->n == list->size) {
        size = list->size ? list->size * 2 : 16;

        ids = realloc(list->ids, size * sizeof(ngx_http_dato_parse_str_t));
        if (ids == NULL) {
            s->failed = 1;
            return;
        }

        list->ids = ids;
        list->size = size;
    }

    list->ids[list->n].data = (const char *) id->data;
    list->ids[list->n].len = id->len;
    list->n++;
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
    unsigned               bit;
    ngx_http_dato_list_t  *list;

    if (s->entity_type.kind || s->event_type.kind) {

        if (s->entity_type.kind != '"' || s->entity_type.escaped
            || s->event_type.kind != '"' || s->event_type.escaped)
        {
            return NGX_HTTP_DATO_SCAN_DECLINED;
        }

        if (!ngx_http_dato_tok_is(&s->entity_type, "item", 4)) {
            res->status = NGX_HTTP_DATO_PARSE_IGNORED;
            res->title = "ignored";
            res->reason = "entity_type";
            strcpy(res->detail, "entity_type is not \"item\"");
            return res->status;
        }

        bit = ngx_http_dato_event_bit((const char *) s->event_type.data,
                                      s->event_type.len);

        if ((bit & events) == 0) {
            res->status = NGX_HTTP_DATO_PARSE_IGNORED;
            res->title = "ignored";
            res->reason = "event_type";
            strcpy(res->detail, "event_type is not in dato_publish_events");
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

        res->ids = malloc(sizeof(ngx_http_dato_parse_str_t));
        if (res->ids == NULL) {
            return NGX_HTTP_DATO_SCAN_DECLINED;
        }

        res->ids[0].data = (const char *) s->entity_id.data;
        res->ids[0].len = s->entity_id.len;
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
        ngx_http_dato_scan_push(s, &s->list, &s->ids);

        if (s->failed) {
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

        /* the jansson path words the 413 */

        if (res->ids != s->items.ids && res->ids != s->list.ids) {
            free(res->ids);
        }

        res->ids = NULL;
        res->nids = 0;
        res->environment.data = NULL;
        res->environment.len = 0;

        return NGX_HTTP_DATO_SCAN_DECLINED;
    }

    res->status = NGX_HTTP_DATO_PARSE_PUBLISH;

    return res->status;
}
