
/*
 * Copyright (C) ngx_http_dato_module authors
 */


#include <stddef.h>
#include <string.h>

#include "ngx_http_dato_valid.h"


/* 2^48 - 1, the largest numeric ID DatoCMS hands out */
#define NGX_HTTP_DATO_NUM_ID_MAX  281474976710655ULL


static int ngx_http_dato_valid_name(const char *p, size_t len, size_t max,
    int word);


/* the 200 answers to webhooks that are valid but not for publishing */
static const char  *ngx_http_dato_ignored_details[] = {
    NULL,
    "entity_type is not \"item\"",
    "event_type is not in dato_publish_events"
};


/* the webhook's event_type names, as dato_publish_events names them */
static const struct {
    const char                 *name;
    size_t                      len;
    unsigned                    bit;
} ngx_http_dato_event_names[] = {
    { "create", 6, NGX_HTTP_DATO_EVENT_CREATE },
    { "update", 6, NGX_HTTP_DATO_EVENT_UPDATE },
    { "unpublish", 9, NGX_HTTP_DATO_EVENT_UNPUBLISH },
    { "delete", 6, NGX_HTTP_DATO_EVENT_DELETE },
    { "publish", 7, NGX_HTTP_DATO_EVENT_PUBLISH },
    { NULL, 0, 0 }
};


/* the value of a base64url character, -1 for the others */
static const signed char  ngx_http_dato_b64[256] = {
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 62, -1, -1,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, -1, -1, -1, -1, -1, -1,
    -1,  0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11, 12, 13, 14,
    15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, -1, -1, -1, -1, 63,
    -1, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
    41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1
};


int
ngx_http_dato_valid_id(const char *p, size_t len)
{
    size_t              i;
    unsigned long long  n;

    if (len == NGX_HTTP_DATO_ID_MAX_LEN) {

        /*
         * 16 bytes in unpadded base64url: the last character carries
         * only 2 bits, so its low 4 bits must be zero
         */

        for (i = 0; i < len; i++) {
            if (ngx_http_dato_b64[(unsigned char) p[i]] < 0) {
                return 0;
            }
        }

        return (ngx_http_dato_b64[(unsigned char) p[len - 1]] & 0x0f) == 0;
    }

    if (len == 0 || len > 15 || p[0] == '0') {
        return 0;
    }

    n = 0;

    for (i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return 0;
        }

        n = n * 10 + (p[i] - '0');
    }

    return n <= NGX_HTTP_DATO_NUM_ID_MAX;
}


int
ngx_http_dato_valid_env(const char *p, size_t len)
{
    return ngx_http_dato_valid_name(p, len, NGX_HTTP_DATO_ENV_MAX_LEN, 0);
}


/*
 * A workflow stage's ID, as dato_move_to_stage names it, and DatoCMS's
 * webhook_call_id: they go into every call's JSON, log lines and the
 * replay guard's keys, so they are kept to a plain word.
 */

int
ngx_http_dato_valid_word(const char *p, size_t len)
{
    return ngx_http_dato_valid_name(p, len, NGX_HTTP_DATO_WORD_MAX_LEN, 1);
}


/* lowercase letters, digits and "-"; a word also uppercase ones and "_" */

static int
ngx_http_dato_valid_name(const char *p, size_t len, size_t max, int word)
{
    size_t  i;

    if (len == 0 || len > max) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if ((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= '0' && p[i] <= '9')
            || p[i] == '-')
        {
            continue;
        }

        if (word && ((p[i] >= 'A' && p[i] <= 'Z') || p[i] == '_')) {
            continue;
        }

        return 0;
    }

    return 1;
}


unsigned
ngx_http_dato_event_bit(const char *name, size_t len)
{
    int  i;

    for (i = 0; ngx_http_dato_event_names[i].name; i++) {
        if (ngx_http_dato_event_names[i].len == len
            && memcmp(ngx_http_dato_event_names[i].name, name, len) == 0)
        {
            return ngx_http_dato_event_names[i].bit;
        }
    }

    return 0;
}


const char *
ngx_http_dato_event_name(unsigned bit)
{
    int  i;

    for (i = 0; ngx_http_dato_event_names[i].name; i++) {
        if (ngx_http_dato_event_names[i].bit == bit) {
            return ngx_http_dato_event_names[i].name;
        }
    }

    return "";
}


/*
 * A webhook that is not about a record, or whose event is not one of
 * "events", is answered 200 "ignored": res says so and why, and its status
 * is returned; 0 for a webhook that goes on.  Both the fast path and the
 * jansson one ask here, so that they answer alike.
 */

int
ngx_http_dato_ignored(ngx_http_dato_parse_result_t *res,
    const char *entity_type, size_t entity_len, const char *event_type,
    size_t event_len, unsigned events)
{
    int  reason;

    if (entity_len != 4 || memcmp(entity_type, "item", 4) != 0) {
        reason = NGX_HTTP_DATO_REASON_ENTITY_TYPE;

    } else if ((ngx_http_dato_event_bit(event_type, event_len) & events)
               == 0)
    {
        reason = NGX_HTTP_DATO_REASON_EVENT_TYPE;

    } else {
        return 0;
    }

    res->status = NGX_HTTP_DATO_PARSE_IGNORED;
    res->title = "ignored";
    res->reason = reason;
    strcpy(res->detail, ngx_http_dato_ignored_details[reason]);

    return res->status;
}
