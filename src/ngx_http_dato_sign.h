
/*
 * Copyright (C) ngx_http_dato_module authors
 *
 * Standard Webhooks signatures: whether a call's webhook-signature header
 * holds an HMAC-SHA256, under one of the configured secrets, of
 * "<webhook-id>.<webhook-timestamp>.<body>", and whether its timestamp is
 * near enough to now.  It knows OpenSSL and nothing of requests: the
 * handler hands it the three headers and the raw body.
 *
 * Its only state is the decoded secrets, in the configuration's pool: they
 * live as long as the configuration that names them.
 */


#ifndef _NGX_HTTP_DATO_SIGN_H_INCLUDED_
#define _NGX_HTTP_DATO_SIGN_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


/* the specification's tolerance: a timestamp within 5 minutes of now */
#define NGX_HTTP_DATO_SIGN_TOLERANCE  300

/* the specification's bounds of a secret, once base64-decoded */
#define NGX_HTTP_DATO_SIGN_KEY_MIN    24
#define NGX_HTTP_DATO_SIGN_KEY_MAX    64

/* the longest webhook-id taken; it is the replay guard's key */
#define NGX_HTTP_DATO_SIGN_ID_MAX     256


typedef enum {
    NGX_HTTP_DATO_SIGN_OK = 0,
    NGX_HTTP_DATO_SIGN_MISSING,
    NGX_HTTP_DATO_SIGN_BAD_ID,
    NGX_HTTP_DATO_SIGN_BAD_TIMESTAMP,
    NGX_HTTP_DATO_SIGN_STALE,
    NGX_HTTP_DATO_SIGN_FUTURE,
    NGX_HTTP_DATO_SIGN_MISMATCH
} ngx_http_dato_sign_rc_e;


/* what a call carries: the three headers, empty when absent */
typedef struct {
    ngx_str_t                     id;
    ngx_str_t                     timestamp;
    ngx_str_t                     signature;
} ngx_http_dato_sign_headers_t;


char *ngx_http_dato_sign_key(ngx_pool_t *pool, ngx_str_t *secret,
    ngx_str_t *key);
ngx_http_dato_sign_rc_e ngx_http_dato_sign_verify(ngx_array_t *keys,
    ngx_http_dato_sign_headers_t *h, ngx_str_t *body, time_t now,
    ngx_pool_t *pool);
const char *ngx_http_dato_sign_reason(ngx_http_dato_sign_rc_e rc);


#endif /* _NGX_HTTP_DATO_SIGN_H_INCLUDED_ */
