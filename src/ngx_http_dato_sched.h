
/*
 * Copyright (C) ngx_http_dato_module authors
 *
 * The call scheduler: how many API calls a token may make, and when.  It
 * knows the budget and nothing of webhooks: a caller asks for a call,
 * reports what the answer's X-RateLimit-* headers said, or releases the
 * call it could not make.
 *
 * Its state lives in the shared zone, one entry per token known at
 * configuration time: every worker of every generation of nginx that uses
 * a token draws from the one entry, and a reload or a worker's death
 * leaves it where it is.
 */


#ifndef _NGX_HTTP_DATO_SCHED_H_INCLUDED_
#define _NGX_HTTP_DATO_SCHED_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


/* the most calls per period planned for, announced or configured */
#define NGX_HTTP_DATO_RATE_MAX      600

/* DatoCMS's window: X-RateLimit-Limit counts calls in 3 s */
#define NGX_HTTP_DATO_API_WINDOW    3000

/* the longest pause that a 429 sets, whatever X-RateLimit-Reset says */
#define NGX_HTTP_DATO_PAUSE_MAX     60000

/* a ticket that no call holds */
#define NGX_HTTP_DATO_NO_TICKET     0


typedef struct ngx_http_dato_sched_s  ngx_http_dato_sched_t;


/* the budget of one token, as a location configures it */
typedef struct {
    ngx_shm_zone_t               *zone;

    /* the token's entry: index into the keys known at configuration time */
    ngx_uint_t                    index;

    /* dato_rate_limit: a cap per period, 0 for "what the API announces" */
    ngx_uint_t                    cap;
    ngx_msec_t                    period;

    /* dato_api_timeout: a call out longer than this is over */
    ngx_msec_t                    timeout;
} ngx_http_dato_rate_t;


/* a token the configuration names, and the smallest cap set for it */
typedef struct {
    uint32_t                      key;
    ngx_uint_t                    cap;
} ngx_http_dato_sched_key_t;


/* what the status page shows of the first token */
typedef struct {
    ngx_msec_t                    pause;
    ngx_uint_t                    limit;
    ngx_uint_t                    announced;
    ngx_uint_t                    remaining;
} ngx_http_dato_sched_state_t;


size_t ngx_http_dato_sched_size(void);
ngx_int_t ngx_http_dato_sched_init_zone(ngx_slab_pool_t *shpool,
    void **root, ngx_http_dato_sched_key_t *keys, ngx_uint_t nkeys,
    ngx_http_dato_sched_t **entries);
void ngx_http_dato_sched_init_process(ngx_slab_pool_t *shpool, void *root);

ngx_msec_t ngx_http_dato_sched_ask(ngx_http_dato_rate_t *rate,
    ngx_uint_t *ticket, ngx_uint_t spare);
ngx_msec_t ngx_http_dato_sched_report(ngx_http_dato_rate_t *rate,
    ngx_uint_t ticket, ngx_uint_t status, ngx_int_t limit,
    ngx_int_t remaining, ngx_int_t reset, ngx_log_t *log);
void ngx_http_dato_sched_release(ngx_http_dato_rate_t *rate,
    ngx_uint_t ticket);
ngx_uint_t ngx_http_dato_sched_limit(ngx_http_dato_rate_t *rate);
void ngx_http_dato_sched_state(void *root,
    ngx_http_dato_sched_state_t *state);


#endif /* _NGX_HTTP_DATO_SCHED_H_INCLUDED_ */
