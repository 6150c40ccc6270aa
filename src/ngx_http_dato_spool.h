
/*
 * Copyright (C) ngx_http_dato_module authors
 *
 * The spool: records that a worker could not send before it had to stop
 * (a fast stop, worker_shutdown_timeout) are written to a file, and read
 * back and sent after the next start.  One file per worker process,
 * "dato_spool_file" with ".PID" added, written whole or not at all (a
 * temporary file, fsync, rename).  It holds record IDs, environments and
 * a hash of each token and URL, never a token.  It knows nothing of
 * batches or webhooks.
 */


#ifndef _NGX_HTTP_DATO_SPOOL_H_INCLUDED_
#define _NGX_HTTP_DATO_SPOOL_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_dato_parse.h"


typedef struct ngx_http_dato_spool_s  ngx_http_dato_spool_t;

/* one line of a spool file read back: records of one token, one env */
typedef ngx_int_t (*ngx_http_dato_spool_pt)(void *data, uint32_t key,
    ngx_str_t *env, ngx_http_dato_parse_str_t *ids, ngx_uint_t n);


ngx_http_dato_spool_t *ngx_http_dato_spool_open(ngx_str_t *path,
    ngx_log_t *log);
ngx_int_t ngx_http_dato_spool_add(ngx_http_dato_spool_t *sp, uint32_t key,
    ngx_str_t *env, u_char **ids, size_t *lens, ngx_uint_t n);
ngx_int_t ngx_http_dato_spool_close(ngx_http_dato_spool_t *sp);
void ngx_http_dato_spool_read(ngx_str_t *path, ngx_log_t *log,
    ngx_http_dato_spool_pt handler, void *data);


#endif /* _NGX_HTTP_DATO_SPOOL_H_INCLUDED_ */
