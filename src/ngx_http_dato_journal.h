
/*
 * Copyright (C) ngx_http_dato_module authors
 *
 * The records a worker must not lose: in the shared zone's journal while
 * it lives, adopted by another worker when it dies, in the spool file
 * when it must stop, see ngx_http_dato_journal.c.
 */


#ifndef _NGX_HTTP_DATO_JOURNAL_H_INCLUDED_
#define _NGX_HTTP_DATO_JOURNAL_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_dato_batch.h"


void ngx_http_dato_journal_init(ngx_http_dato_batcher_t *b);
void ngx_http_dato_journal_done(ngx_http_dato_batcher_t *b);
void ngx_http_dato_journal_set(ngx_http_dato_batch_t *batch, ngx_uint_t on);
void ngx_http_dato_journal_spool(ngx_http_dato_batcher_t *b);


#endif /* _NGX_HTTP_DATO_JOURNAL_H_INCLUDED_ */
