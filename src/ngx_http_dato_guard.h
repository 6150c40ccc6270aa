
/*
 * Copyright (C) ngx_http_dato_module authors
 *
 * The guards a webhook passes before its records are queued: the shared
 * secret header (dato_webhook_secret), the Standard Webhooks signature
 * (dato_webhook_signing_secret, checked by ngx_http_dato_sign.c) and the
 * replay guard (ngx_http_dato_seen.c), which answers a call it has
 * already accepted as it answered it then.  It knows the request; the
 * handler sends the answers.
 *
 * Its state: a replay claim lives in the request pool, with a cleanup
 * that gives it back when the request ends without a 2xx; the IDs live
 * in the shared zone.
 */


#ifndef _NGX_HTTP_DATO_GUARD_H_INCLUDED_
#define _NGX_HTTP_DATO_GUARD_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_dato.h"
#include "ngx_http_dato_parse.h"
#include "ngx_http_dato_seen.h"
#include "ngx_http_dato_sign.h"


ngx_int_t ngx_http_dato_guard_secret(ngx_http_request_t *r,
    ngx_http_dato_loc_conf_t *dlcf);
ngx_http_dato_sign_rc_e ngx_http_dato_guard_signature(ngx_http_request_t *r,
    ngx_http_dato_loc_conf_t *dlcf, ngx_str_t *body, ngx_str_t *id);
ngx_int_t ngx_http_dato_guard_replay(ngx_http_request_t *r,
    ngx_http_dato_loc_conf_t *dlcf, ngx_str_t *signed_id,
    ngx_http_dato_parse_result_t *res, ngx_http_dato_seen_answer_t *answer);
void ngx_http_dato_guard_settle(ngx_http_request_t *r, ngx_uint_t status,
    ngx_buf_t *b);


#endif /* _NGX_HTTP_DATO_GUARD_H_INCLUDED_ */
