
/*
 * Copyright (C) ngx_http_dato_module authors
 *
 * The webhook side: reads a webhook, hands its records to the batcher and
 * answers it, at once or when its batches have been answered.
 */


#ifndef _NGX_HTTP_DATO_HANDLER_H_INCLUDED_
#define _NGX_HTTP_DATO_HANDLER_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


ngx_int_t ngx_http_dato_handler(ngx_http_request_t *r);

extern ngx_http_variable_t  ngx_http_dato_variables[];


#endif /* _NGX_HTTP_DATO_HANDLER_H_INCLUDED_ */
