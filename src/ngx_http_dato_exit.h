
/*
 * Copyright (C) ngx_http_dato_module authors
 *
 * The worker's exit as the batcher lives it: a graceful exit sends every
 * batch at once, worker_shutdown_timeout and the exit itself end them,
 * see ngx_http_dato_exit.c.
 */


#ifndef _NGX_HTTP_DATO_EXIT_H_INCLUDED_
#define _NGX_HTTP_DATO_EXIT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_dato_batch.h"


ngx_int_t ngx_http_dato_exit_init(ngx_http_dato_batcher_t *b);
void ngx_http_dato_exit_done(ngx_http_dato_batcher_t *b);
void ngx_http_dato_exit_abort(ngx_http_dato_batcher_t *b, const char *why);


#endif /* _NGX_HTTP_DATO_EXIT_H_INCLUDED_ */
