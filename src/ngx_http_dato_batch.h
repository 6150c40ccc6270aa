
/*
 * Copyright (C) ngx_http_dato_module authors
 *
 * The batcher: joins the records of many webhooks into bulk publish calls
 * of at most batch_size records per target and environment, sends them
 * through the client when full or when their window ends, and hands each
 * answer back to the webhooks that wait on it.  One per worker process.
 * This is what the rest of the module sees; its insides and its four
 * rooms are in ngx_http_dato_batch_int.h.
 */


#ifndef _NGX_HTTP_DATO_BATCH_H_INCLUDED_
#define _NGX_HTTP_DATO_BATCH_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_dato_client.h"
#include "ngx_http_dato_parse.h"
#include "ngx_http_dato_shm.h"


/* the log lines' plurals: "%ui record%s", n, ngx_http_dato_plural(n) */
#define ngx_http_dato_plural(n)  ((n) == 1 ? "" : "s")


/* waiter->fail_status when DatoCMS gave no answer at all */
#define NGX_HTTP_DATO_NO_ANSWER  1


typedef struct ngx_http_dato_batcher_s  ngx_http_dato_batcher_t;
typedef struct ngx_http_dato_batch_s    ngx_http_dato_batch_t;
typedef struct ngx_http_dato_waiter_s   ngx_http_dato_waiter_t;

typedef void (*ngx_http_dato_waiter_pt)(ngx_http_dato_waiter_t *w);


/* DatoCMS's most records per bulk call: dato_batch_size's bound */
#define NGX_HTTP_DATO_BATCH_MAX  200


/* where batches go: one per dato_publish (unpublish...) location */
typedef struct ngx_http_dato_target_s {
    /*
     * a hash of the token, the URL, the action and its stage, by which
     * an heir or the spool finds the target of a batch; the scheduler's
     * entry is the token's and URL's alone (rate.index)
     */
    uint32_t                      key;

    /* ngx_http_dato_action_e; its stage is the client's (client.stage) */
    ngx_uint_t                    action;

    ngx_http_dato_client_conf_t   client;
    ngx_http_dato_rate_t          rate;
    ngx_uint_t                    batch_size;
    ngx_msec_t                    batch_window;
    ngx_msec_t                    retry_timeout;
    ngx_flag_t                    job_poll;
    ngx_msec_t                    job_timeout;

    /* per worker: the batches still filling, one per environment */
    ngx_queue_t                   open;

    /* per worker: the batches held by the rate limit, oldest first */
    ngx_queue_t                   line;
} ngx_http_dato_target_t;


/* a job that carries some of a webhook's records */
typedef struct {
    ngx_str_t                     id;

    /* the job's result: attributes.status, 0 while it is not known */
    ngx_uint_t                    status;
    ngx_uint_t                    successful;
    ngx_uint_t                    failed;

    /* its records were sent again in other calls, which have their jobs */
    unsigned                      superseded:1;
} ngx_http_dato_job_t;


/* a webhook that waits for the answers of the batches it went into */
struct ngx_http_dato_waiter_s {
    ngx_http_dato_waiter_pt       handler;
    void                         *data;
    ngx_pool_t                   *pool;

    /* ngx_http_dato_link_t *, one per batch this webhook went into */
    ngx_array_t                   links;
    ngx_uint_t                    pending;

    /* ngx_http_dato_job_t, allocated in pool */
    ngx_array_t                   jobs;

    /* ngx_str_t: the webhook's records that were given up */
    ngx_array_t                   refused;

    /* the first failure: DatoCMS's status, or NGX_HTTP_DATO_NO_ANSWER */
    ngx_uint_t                    fail_status;
    ngx_str_t                     code;

    /* set once ngx_http_dato_batch_add() has returned */
    unsigned                      armed:1;

    /* waits for the jobs to finish, not only for their IDs */
    unsigned                      result:1;
};


ngx_http_dato_batcher_t *ngx_http_dato_batcher_create(ngx_log_t *log,
    ngx_uint_t queue_size, ngx_shm_zone_t *zone, ngx_array_t *targets,
    ngx_str_t *spool);
void ngx_http_dato_batcher_destroy(ngx_http_dato_batcher_t *b);
ngx_int_t ngx_http_dato_batch_add(ngx_http_dato_batcher_t *b,
    ngx_http_dato_target_t *target, ngx_str_t *env,
    ngx_http_dato_parse_str_t *ids, ngx_uint_t n, ngx_http_dato_waiter_t *w,
    ngx_log_t *log);
ngx_int_t ngx_http_dato_waiter_init(ngx_http_dato_waiter_t *w,
    ngx_pool_t *pool);
void ngx_http_dato_waiter_cancel(ngx_http_dato_waiter_t *w);


#endif /* _NGX_HTTP_DATO_BATCH_H_INCLUDED_ */
