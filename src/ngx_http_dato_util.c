
/*
 * Copyright (C) ngx_http_dato_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <jansson.h>

#include "ngx_http_dato_util.h"


/* the JSON document, compact, with a final newline; gives up root */

ngx_buf_t *
ngx_http_dato_json_buf(ngx_pool_t *pool, json_t *root)
{
    size_t      len;
    ngx_buf_t  *b;

    if (root == NULL) {
        return NULL;
    }

    len = json_dumpb(root, NULL, 0, JSON_COMPACT);

    b = ngx_create_temp_buf(pool, len + 1);

    if (b) {
        b->last += json_dumpb(root, (char *) b->pos, len, JSON_COMPACT);
        *b->last++ = '\n';
    }

    json_decref(root);

    return b;
}


ngx_int_t
ngx_http_dato_output(ngx_http_request_t *r, ngx_uint_t status, char *type,
    ngx_buf_t *b)
{
    ngx_int_t     rc;
    ngx_chain_t   out;

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = status;
    r->headers_out.content_length_n = b->last - b->pos;
    r->headers_out.content_type.data = (u_char *) type;
    r->headers_out.content_type.len = ngx_strlen(type);
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}
