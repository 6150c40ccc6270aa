
/*
 * Copyright (C) ngx_http_dato_module authors
 *
 * The payload parser: turns a webhook body into record IDs.  It knows
 * jansson and DatoCMS IDs, and nothing of nginx, so that it can be built
 * and fuzzed on its own.  ngx_http_dato_scan() (ngx_http_dato_scan.c) is
 * its fast path, ngx_http_dato_parse_json() the jansson one that decides
 * whatever the fast path leaves; both check names with
 * ngx_http_dato_valid.c.
 */


#ifndef _NGX_HTTP_DATO_PARSE_H_INCLUDED_
#define _NGX_HTTP_DATO_PARSE_H_INCLUDED_


#include <stddef.h>
#include <jansson.h>


#define NGX_HTTP_DATO_ID_MAX_LEN     22
#define NGX_HTTP_DATO_ENV_MAX_LEN    63
#define NGX_HTTP_DATO_DETAIL_LEN     512

/* what the parser decided; the values are the HTTP statuses to answer */
#define NGX_HTTP_DATO_PARSE_PUBLISH  202
#define NGX_HTTP_DATO_PARSE_IGNORED  200
#define NGX_HTTP_DATO_PARSE_BAD_JSON 400
#define NGX_HTTP_DATO_PARSE_TOO_MANY 413
#define NGX_HTTP_DATO_PARSE_INVALID  422

/* the fast path leaves the body to jansson */
#define NGX_HTTP_DATO_SCAN_DECLINED  0

/* why a webhook is ignored (NGX_HTTP_DATO_PARSE_IGNORED) */
#define NGX_HTTP_DATO_REASON_NONE         0
#define NGX_HTTP_DATO_REASON_ENTITY_TYPE  1
#define NGX_HTTP_DATO_REASON_EVENT_TYPE   2

/* dato_publish_events bits */
#define NGX_HTTP_DATO_EVENT_CREATE     0x01
#define NGX_HTTP_DATO_EVENT_UPDATE     0x02
#define NGX_HTTP_DATO_EVENT_UNPUBLISH  0x04
#define NGX_HTTP_DATO_EVENT_DELETE     0x08
#define NGX_HTTP_DATO_EVENT_PUBLISH    0x10


typedef struct {
    const char                 *data;
    size_t                      len;
} ngx_http_dato_parse_str_t;


typedef struct {
    int                         status;
    const char                 *title;

    /* why a webhook is ignored: NGX_HTTP_DATO_REASON_* */
    int                         reason;

    /* the IDs point into root, which lives until ngx_http_dato_parse_free */
    ngx_http_dato_parse_str_t  *ids;
    size_t                      nids;

    /* where ids points for one ID: a webhook's needs no allocation */
    ngx_http_dato_parse_str_t   id;

    /* the webhook's own environment when it is not the primary one */
    ngx_http_dato_parse_str_t   environment;

    /* DatoCMS's webhook_call_id, the same in its retries; or empty */
    ngx_http_dato_parse_str_t   call_id;

    json_t                     *root;

    /* last: ngx_http_dato_parse() clears the fields up to its first byte */
    char                        detail[NGX_HTTP_DATO_DETAIL_LEN];
} ngx_http_dato_parse_result_t;


int ngx_http_dato_parse(const char *buf, size_t len, unsigned events,
    size_t max_ids, ngx_http_dato_parse_result_t *res);
int ngx_http_dato_parse_json(const char *buf, size_t len, unsigned events,
    size_t max_ids, ngx_http_dato_parse_result_t *res);
int ngx_http_dato_scan(const char *buf, size_t len, unsigned events,
    size_t max_ids, ngx_http_dato_parse_result_t *res);
void ngx_http_dato_parse_free(ngx_http_dato_parse_result_t *res);


#endif /* _NGX_HTTP_DATO_PARSE_H_INCLUDED_ */
