
/*
 * Copyright (C) ngx_http_dato_module authors
 *
 * What the webhook side and the status page both answer with: a JSON
 * document in a buffer, and a buffer as the whole response.
 */


#ifndef _NGX_HTTP_DATO_UTIL_H_INCLUDED_
#define _NGX_HTTP_DATO_UTIL_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>


ngx_buf_t *ngx_http_dato_json_buf(ngx_pool_t *pool, json_t *root);
ngx_int_t ngx_http_dato_output(ngx_http_request_t *r, ngx_uint_t status,
    char *type, ngx_buf_t *b);


#endif /* _NGX_HTTP_DATO_UTIL_H_INCLUDED_ */
