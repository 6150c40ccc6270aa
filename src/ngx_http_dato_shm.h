
/*
 * Copyright (C) ngx_http_dato_module authors
 *
 * The shared zone: what all workers of one nginx must agree on.  For now
 * the API rate limit of each token: a log of the last calls and a pause
 * that a 429 sets.  The zone keeps no token, only a hash of it.
 */


#ifndef _NGX_HTTP_DATO_SHM_H_INCLUDED_
#define _NGX_HTTP_DATO_SHM_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


/* the most calls per period that dato_rate_limit takes */
#define NGX_HTTP_DATO_RATE_MAX  600


typedef struct {
    ngx_shm_zone_t               *zone;
    uint32_t                      key;
    ngx_uint_t                    limit;
    ngx_msec_t                    period;
} ngx_http_dato_rate_t;


ngx_shm_zone_t *ngx_http_dato_shm_add(ngx_conf_t *cf);
ngx_msec_t ngx_http_dato_rate_acquire(ngx_http_dato_rate_t *rate);
void ngx_http_dato_rate_pause(ngx_http_dato_rate_t *rate, ngx_msec_t ms);


#endif /* _NGX_HTTP_DATO_SHM_H_INCLUDED_ */
