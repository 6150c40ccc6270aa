
/*
 * Copyright (C) ngx_http_dato_module authors
 */


#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ngx_http_dato_parse.h"
#include "ngx_http_dato_valid.h"


/* how many offending values a 422 names before it says "and N more" */
#define NGX_HTTP_DATO_BAD_SHOWN  5
#define NGX_HTTP_DATO_BAD_WIDTH  40



typedef struct {
    size_t                      count;
    size_t                      used;
    char                       *p;
    char                       *last;
} ngx_http_dato_bad_t;


static int ngx_http_dato_parse_webhook(json_t *root, unsigned events,
    ngx_http_dato_parse_result_t *res);
static int ngx_http_dato_parse_bulk(json_t *data,
    ngx_http_dato_parse_result_t *res);
static int ngx_http_dato_parse_list(json_t *list, int bulk,
    ngx_http_dato_parse_result_t *res);
static void ngx_http_dato_parse_clear(ngx_http_dato_parse_result_t *res);
static void ngx_http_dato_parse_ids_free(ngx_http_dato_parse_result_t *res);
static void ngx_http_dato_bad_add(ngx_http_dato_bad_t *bad, json_t *value);
static int ngx_http_dato_fail(ngx_http_dato_parse_result_t *res, int status,
    const char *title, const char *fmt, ...);


int
ngx_http_dato_parse(const char *buf, size_t len, unsigned events,
    size_t max_ids, ngx_http_dato_parse_result_t *res)
{
    int  rc;

    ngx_http_dato_parse_clear(res);

    rc = ngx_http_dato_scan(buf, len, events, max_ids, res);

    if (rc != NGX_HTTP_DATO_SCAN_DECLINED) {
        return rc;
    }

    return ngx_http_dato_parse_json(buf, len, events, max_ids, res);
}


int
ngx_http_dato_parse_json(const char *buf, size_t len, unsigned events,
    size_t max_ids, ngx_http_dato_parse_result_t *res)
{
    int           rc;
    json_t       *v;
    json_error_t  err;

    ngx_http_dato_parse_clear(res);

    /*
     * duplicate keys are refused: with them a body could mean two things,
     * one to a validating proxy and another one here
     */

    res->root = json_loadb(buf, len, JSON_REJECT_DUPLICATES|JSON_DECODE_ANY,
                           &err);

    if (res->root == NULL) {
        return ngx_http_dato_fail(res, NGX_HTTP_DATO_PARSE_BAD_JSON,
                                  "invalid JSON", "%s at line %d column %d",
                                  err.text, err.line, err.column);
    }

    if (!json_is_object(res->root)) {
        return ngx_http_dato_fail(res, NGX_HTTP_DATO_PARSE_INVALID,
                                  "unexpected payload",
                                  "the body must be a JSON object");
    }

    if (json_object_get(res->root, "entity_type") != NULL
        || json_object_get(res->root, "event_type") != NULL)
    {
        rc = ngx_http_dato_parse_webhook(res->root, events, res);

    } else if ((v = json_object_get(res->root, "data")) != NULL) {
        rc = ngx_http_dato_parse_bulk(v, res);

    } else if ((v = json_object_get(res->root, "ids")) != NULL) {
        rc = ngx_http_dato_parse_list(v, 0, res);

    } else {
        return ngx_http_dato_fail(res, NGX_HTTP_DATO_PARSE_INVALID,
                                  "unexpected payload",
                                  "expected a DatoCMS webhook, a bulk publish "
                                  "body or {\"ids\":[...]}");
    }

    if (rc != NGX_HTTP_DATO_PARSE_PUBLISH) {
        return rc;
    }

    if (max_ids && res->nids > max_ids) {
        return ngx_http_dato_fail(res, NGX_HTTP_DATO_PARSE_TOO_MANY,
                                  "too many records",
                                  "%zu records, at most %zu are accepted "
                                  "in one request", res->nids, max_ids);
    }

    res->status = NGX_HTTP_DATO_PARSE_PUBLISH;

    return res->status;
}


/* all but the detail text, which is written when there is one */

static void
ngx_http_dato_parse_clear(ngx_http_dato_parse_result_t *res)
{
    memset(res, 0, offsetof(ngx_http_dato_parse_result_t, detail) + 1);
}


void
ngx_http_dato_parse_free(ngx_http_dato_parse_result_t *res)
{
    ngx_http_dato_parse_ids_free(res);

    res->environment.data = NULL;
    res->environment.len = 0;

    if (res->root) {
        json_decref(res->root);
        res->root = NULL;
    }
}


static void
ngx_http_dato_parse_ids_free(ngx_http_dato_parse_result_t *res)
{
    if (res->ids != &res->id) {
        free(res->ids);
    }

    res->ids = NULL;
    res->nids = 0;
}


static int
ngx_http_dato_parse_webhook(json_t *root, unsigned events,
    ngx_http_dato_parse_result_t *res)
{
    json_t  *entity_type, *event_type, *entity, *id, *env, *primary, *call;

    entity_type = json_object_get(root, "entity_type");
    event_type = json_object_get(root, "event_type");

    if (!json_is_string(entity_type) || !json_is_string(event_type)) {
        return ngx_http_dato_fail(res, NGX_HTTP_DATO_PARSE_INVALID,
                                  "invalid webhook",
                                  "\"entity_type\" and \"event_type\" "
                                  "must be strings");
    }

    if (ngx_http_dato_ignored(res, json_string_value(entity_type),
                              json_string_length(entity_type),
                              json_string_value(event_type),
                              json_string_length(event_type), events))
    {
        return res->status;
    }

    entity = json_object_get(root, "entity");
    id = json_object_get(entity, "id");

    /* one webhook, one record: "id" is a string, never a list */

    if (!json_is_object(entity) || id == NULL || json_is_array(id)) {
        return ngx_http_dato_fail(res, NGX_HTTP_DATO_PARSE_INVALID,
                                  "invalid webhook",
                                  "\"entity\" must be an object with an "
                                  "\"id\"");
    }

    /*
     * a sandbox environment is named in the payload; the primary one is
     * what the API targets without an X-Environment header
     */

    primary = json_object_get(root, "is_environment_primary");
    env = json_object_get(root, "environment");
    call = json_object_get(root, "webhook_call_id");

    /* a retry's key for the replay guard; a webhook without one has none */

    if (json_is_string(call)
        && ngx_http_dato_valid_word(json_string_value(call),
                                    json_string_length(call)))
    {
        res->call_id.data = json_string_value(call);
        res->call_id.len = json_string_length(call);
    }

    if (json_is_false(primary)) {
        if (!json_is_string(env)
            || !ngx_http_dato_valid_env(json_string_value(env),
                                        json_string_length(env)))
        {
            return ngx_http_dato_fail(res, NGX_HTTP_DATO_PARSE_INVALID,
                                      "invalid webhook",
                                      "\"environment\" must name an "
                                      "environment (lowercase letters, "
                                      "digits and dashes)");
        }

        res->environment.data = json_string_value(env);
        res->environment.len = json_string_length(env);
    }

    return ngx_http_dato_parse_list(id, 0, res);
}


static int
ngx_http_dato_parse_bulk(json_t *data, ngx_http_dato_parse_result_t *res)
{
    json_t      *type, *items;
    const char  *t;

    type = json_object_get(data, "type");

    if (!json_is_object(data) || !json_is_string(type)) {
        return ngx_http_dato_fail(res, NGX_HTTP_DATO_PARSE_INVALID,
                                  "invalid bulk publish body",
                                  "\"data\" must be an object with a "
                                  "\"type\"");
    }

    t = json_string_value(type);

    if (strcmp(t, "item_bulk_publish_operation") != 0) {
        return ngx_http_dato_fail(res, NGX_HTTP_DATO_PARSE_INVALID,
                                  "invalid bulk publish body",
                                  "\"data.type\" must be "
                                  "\"item_bulk_publish_operation\"");
    }

    items = json_object_get(json_object_get(json_object_get(data,
                                            "relationships"), "items"),
                            "data");

    if (items == NULL) {
        return ngx_http_dato_fail(res, NGX_HTTP_DATO_PARSE_INVALID,
                                  "invalid bulk publish body",
                                  "\"data.relationships.items.data\" "
                                  "is missing");
    }

    return ngx_http_dato_parse_list(items, 1, res);
}


/*
 * One ID (a JSON string), or an array of IDs; in a bulk body the array
 * holds {"type":"item","id":...} objects instead.
 */

static int
ngx_http_dato_parse_list(json_t *list, int bulk,
    ngx_http_dato_parse_result_t *res)
{
    char                 buf[NGX_HTTP_DATO_DETAIL_LEN];
    size_t               i, n;
    json_t              *v, *id, *type;
    ngx_http_dato_bad_t  bad;

    if (json_is_array(list)) {
        n = json_array_size(list);

    } else if (!bulk && json_is_string(list)) {
        n = 1;

    } else {
        return ngx_http_dato_fail(res, NGX_HTTP_DATO_PARSE_INVALID,
                                  "invalid record IDs",
                                  bulk ? "the items must be an array"
                                       : "the record IDs must be an array "
                                         "of strings");
    }

    if (n == 0) {
        return ngx_http_dato_fail(res, NGX_HTTP_DATO_PARSE_INVALID,
                                  "no records", "the list of records is "
                                  "empty");
    }

    res->ids = (n == 1) ? &res->id
                        : malloc(n * sizeof(ngx_http_dato_parse_str_t));
    if (res->ids == NULL) {
        return ngx_http_dato_fail(res, NGX_HTTP_DATO_PARSE_INVALID,
                                  "out of memory", "no memory for %zu IDs",
                                  n);
    }

    bad.count = 0;
    bad.used = 0;
    bad.p = buf;
    bad.last = buf + sizeof(buf);
    buf[0] = '\0';

    for (i = 0; i < n; i++) {
        v = json_is_array(list) ? json_array_get(list, i) : list;
        id = v;

        if (bulk) {
            type = json_object_get(v, "type");
            id = json_object_get(v, "id");

            if (!json_is_string(type)
                || strcmp(json_string_value(type), "item") != 0)
            {
                ngx_http_dato_bad_add(&bad, v);
                continue;
            }
        }

        if (!json_is_string(id)
            || !ngx_http_dato_valid_id(json_string_value(id),
                                       json_string_length(id)))
        {
            ngx_http_dato_bad_add(&bad, id ? id : v);
            continue;
        }

        res->ids[res->nids].data = json_string_value(id);
        res->ids[res->nids].len = json_string_length(id);
        res->nids++;
    }

    if (bad.count) {
        if (bad.count > bad.used) {
            snprintf(bad.p, bad.last - bad.p, " and %zu more",
                     bad.count - bad.used);
        }

        return ngx_http_dato_fail(res, NGX_HTTP_DATO_PARSE_INVALID,
                                  "invalid record IDs",
                                  "not DatoCMS record IDs: %s", buf);
    }

    return NGX_HTTP_DATO_PARSE_PUBLISH;
}


/*
 * The offending value is written as compact ASCII JSON and cut to a width,
 * so that the detail stays valid UTF-8 and short whatever came in.
 */

static void
ngx_http_dato_bad_add(ngx_http_dato_bad_t *bad, json_t *value)
{
    char    *dump, tmp[NGX_HTTP_DATO_BAD_WIDTH + 1];
    size_t   n, left;

    bad->count++;

    if (bad->used == NGX_HTTP_DATO_BAD_SHOWN) {
        return;
    }

    /*
     * json_dumpb() into a buffer too small leaves it partly unwritten:
     * the whole value is dumped, then cut
     */

    dump = json_dumps(value, JSON_ENCODE_ANY | JSON_COMPACT
                             | JSON_ENSURE_ASCII);
    n = dump ? strlen(dump) : 0;

    if (n > NGX_HTTP_DATO_BAD_WIDTH) {
        n = NGX_HTTP_DATO_BAD_WIDTH - 3;
        memcpy(tmp + n, "...", 3);
        memcpy(tmp, dump, n);
        n += 3;

    } else if (n) {
        memcpy(tmp, dump, n);
    }

    free(dump);

    tmp[n] = '\0';

    left = bad->last - bad->p;

    n = snprintf(bad->p, left, "%s%s", bad->used ? ", " : "", tmp);
    bad->p += (n < left) ? n : left - 1;
    bad->used++;
}


static int
ngx_http_dato_fail(ngx_http_dato_parse_result_t *res, int status,
    const char *title, const char *fmt, ...)
{
    char     *p;
    va_list   args;

    va_start(args, fmt);
    vsnprintf(res->detail, sizeof(res->detail), fmt, args);
    va_end(args);

    /* jansson quotes the input near a syntax error: keep it ASCII */

    for (p = res->detail; *p; p++) {
        if ((unsigned char) *p < 0x20 || (unsigned char) *p > 0x7e) {
            *p = '?';
        }
    }

    res->status = status;
    res->title = title;

    ngx_http_dato_parse_ids_free(res);

    return status;
}
