
/*
 * Copyright (C) ngx_http_dato_module authors
 *
 * Following the jobs DatoCMS accepted: polls for their results, within
 * dato_job_timeout and the jobs' bound, see ngx_http_dato_job.c.
 */


#ifndef _NGX_HTTP_DATO_JOB_H_INCLUDED_
#define _NGX_HTTP_DATO_JOB_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_dato_batch.h"


void ngx_http_dato_job_accepted(ngx_http_dato_batch_t *batch,
    ngx_http_dato_client_result_t *res);
void ngx_http_dato_job_poll(ngx_http_dato_batch_t *batch);
void ngx_http_dato_job_end(ngx_http_dato_batch_t *batch, ngx_uint_t level,
    const char *what);
void ngx_http_dato_job_unfollow(ngx_http_dato_batch_t *batch);
ngx_int_t ngx_http_dato_job_evict(ngx_http_dato_batcher_t *b);


#endif /* _NGX_HTTP_DATO_JOB_H_INCLUDED_ */
