
/*
 * Copyright (C) ngx_http_dato_module authors
 *
 * The shared zone: what all workers of one nginx must agree on, and what
 * survives reloads and a worker's death.  The scheduler's entries, one per
 * token (ngx_http_dato_sched.c; the zone keeps no token, only a hash of
 * it), and the counters of the status page.
 */


#ifndef _NGX_HTTP_DATO_SHM_H_INCLUDED_
#define _NGX_HTTP_DATO_SHM_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_dato_action.h"
#include "ngx_http_dato_sched.h"


/* dato_zone_size: the default, and the least that nginx takes */
#define NGX_HTTP_DATO_SHM_SIZE      (4 * 1024 * 1024)
#define NGX_HTTP_DATO_SHM_SIZE_MIN  (32 * 1024)


/* how many of the record counters follow each action */
#define NGX_HTTP_DATO_ACTION_STATS                                            \
    (NGX_HTTP_DATO_RECORDS_GIVEN_UP - NGX_HTTP_DATO_RECORDS_QUEUED + 1)

/* where an action's record counter is, NGX_HTTP_DATO_RECORDS_* its kind */
#define ngx_http_dato_action_stat(action, stat)                               \
    (NGX_HTTP_DATO_ACTION_RECORDS + (action) * NGX_HTTP_DATO_ACTION_STATS     \
     + (stat) - NGX_HTTP_DATO_RECORDS_QUEUED)


/* the counters and gauges of the status page */
enum {
    NGX_HTTP_DATO_WEBHOOKS_RECEIVED = 0,
    NGX_HTTP_DATO_WEBHOOKS_ACCEPTED,
    NGX_HTTP_DATO_IGNORED_ENTITY_TYPE,
    NGX_HTTP_DATO_IGNORED_EVENT_TYPE,
    NGX_HTTP_DATO_REJECTED_400,
    NGX_HTTP_DATO_REJECTED_401,
    NGX_HTTP_DATO_REJECTED_405,
    NGX_HTTP_DATO_REJECTED_413,
    NGX_HTTP_DATO_REJECTED_415,
    NGX_HTTP_DATO_REJECTED_422,
    NGX_HTTP_DATO_REJECTED_500,
    NGX_HTTP_DATO_REJECTED_503,
    NGX_HTTP_DATO_RECORDS_QUEUED,
    NGX_HTTP_DATO_RECORDS_SENT,
    NGX_HTTP_DATO_RECORDS_PUBLISHED,
    NGX_HTTP_DATO_RECORDS_FAILED,
    NGX_HTTP_DATO_RECORDS_GIVEN_UP,
    NGX_HTTP_DATO_CALLS_PUBLISH,           /* 5 outcomes follow each */
    NGX_HTTP_DATO_CALLS_JOB = NGX_HTTP_DATO_CALLS_PUBLISH + 5,
    NGX_HTTP_DATO_RETRIES = NGX_HTTP_DATO_CALLS_JOB + 5,
    NGX_HTTP_DATO_JOBS_PENDING,
    NGX_HTTP_DATO_JOBS_DONE,
    NGX_HTTP_DATO_JOBS_FAILED,
    NGX_HTTP_DATO_JOBS_UNFINISHED,
    NGX_HTTP_DATO_WEBHOOKS_REPLAYED,
    NGX_HTTP_DATO_REJECTED_409,
    NGX_HTTP_DATO_CALLS_UNPUBLISH,
    NGX_HTTP_DATO_CALLS_MOVE_TO_STAGE = NGX_HTTP_DATO_CALLS_UNPUBLISH + 5,

    /* NGX_HTTP_DATO_RECORDS_QUEUED ... _GIVEN_UP again, per action */
    NGX_HTTP_DATO_ACTION_RECORDS = NGX_HTTP_DATO_CALLS_MOVE_TO_STAGE + 5,
    NGX_HTTP_DATO_STATS = NGX_HTTP_DATO_ACTION_RECORDS
                          + NGX_HTTP_DATO_ACTION_STATS * NGX_HTTP_DATO_ACTIONS
};

/* the outcome of an API call, added to NGX_HTTP_DATO_CALLS_* */
#define NGX_HTTP_DATO_CALL_SUCCESS       0
#define NGX_HTTP_DATO_CALL_RATE_LIMITED  1
#define NGX_HTTP_DATO_CALL_CLIENT_ERROR  2
#define NGX_HTTP_DATO_CALL_SERVER_ERROR  3
#define NGX_HTTP_DATO_CALL_NETWORK       4

#define NGX_HTTP_DATO_LATENCY_JOB_ID     0
#define NGX_HTTP_DATO_LATENCY_JOB_DONE   1
#define NGX_HTTP_DATO_LATENCY_BUCKETS    10

#define NGX_HTTP_DATO_LAST_JOBS          8


typedef struct {
    ngx_atomic_t                  count;
    ngx_atomic_t                  sum_ms;
    ngx_atomic_t                  buckets[NGX_HTTP_DATO_LATENCY_BUCKETS];
} ngx_http_dato_histogram_t;


typedef struct {
    u_char                        id[32];
    size_t                        id_len;
    ngx_uint_t                    records;
    ngx_uint_t                    status;
    ngx_uint_t                    successful;
    ngx_uint_t                    failed;
    time_t                        sent;
    time_t                        done;
} ngx_http_dato_last_job_t;


/* what the status page shows, copied out of the zone at once */
typedef struct {
    ngx_atomic_uint_t             stats[NGX_HTTP_DATO_STATS];
    ngx_http_dato_histogram_t     latency[2];
    ngx_http_dato_last_job_t      jobs[NGX_HTTP_DATO_LAST_JOBS];
    ngx_uint_t                    njobs;
    ngx_uint_t                    error_status;
    u_char                        error_code[64];
    size_t                        error_code_len;
    time_t                        error_time;
    ngx_http_dato_sched_state_t   rate;
} ngx_http_dato_snapshot_t;


typedef struct ngx_http_dato_shctx_s  ngx_http_dato_shctx_t;


/* per configuration cycle: zone->data */
typedef struct {
    ngx_http_dato_shctx_t        *sh;
    ngx_slab_pool_t              *shpool;

    /* ngx_http_dato_sched_key_t: the tokens the configuration names */
    ngx_array_t                   keys;

    /* their scheduler entries, found when the zone is set up */
    ngx_http_dato_sched_t       **entries;
} ngx_http_dato_shm_ctx_t;


typedef ngx_uint_t (*ngx_http_dato_shm_dead_pt)(ngx_queue_t *q);


ngx_shm_zone_t *ngx_http_dato_shm_add(ngx_conf_t *cf, size_t size);
void *ngx_http_dato_shm_alloc(ngx_shm_zone_t *zone, size_t size);
void ngx_http_dato_shm_free(ngx_shm_zone_t *zone, void *p);
void ngx_http_dato_shm_journal(ngx_shm_zone_t *zone, ngx_queue_t *q,
    ngx_uint_t add);
ngx_uint_t ngx_http_dato_shm_journal_take(ngx_shm_zone_t *zone,
    ngx_http_dato_shm_dead_pt dead, ngx_queue_t **found, ngx_uint_t n);
ngx_int_t ngx_http_dato_shm_key(ngx_shm_zone_t *zone, uint32_t key,
    ngx_uint_t cap, ngx_uint_t *index);
void **ngx_http_dato_shm_seen(ngx_shm_zone_t *zone,
    ngx_slab_pool_t **shpool);
char *ngx_http_dato_shm_check(ngx_conf_t *cf, ngx_shm_zone_t *zone);
void ngx_http_dato_shm_init_process(ngx_shm_zone_t *zone);

void ngx_http_dato_stat_add(ngx_shm_zone_t *zone, ngx_uint_t stat,
    ngx_atomic_int_t n);
void ngx_http_dato_stat_records(ngx_shm_zone_t *zone, ngx_uint_t action,
    ngx_uint_t stat, ngx_atomic_int_t n);
ngx_uint_t ngx_http_dato_stat_calls(ngx_uint_t action);
ngx_uint_t ngx_http_dato_stat_rejected(ngx_uint_t status);
void ngx_http_dato_stat_call(ngx_shm_zone_t *zone, ngx_uint_t base,
    ngx_uint_t status, ngx_str_t *code);
void ngx_http_dato_stat_latency(ngx_shm_zone_t *zone, ngx_uint_t which,
    ngx_msec_t ms);
void ngx_http_dato_stat_job(ngx_shm_zone_t *zone, ngx_str_t *id,
    ngx_uint_t records, ngx_uint_t status, ngx_uint_t successful,
    ngx_uint_t failed);
void ngx_http_dato_shm_snapshot(ngx_shm_zone_t *zone,
    ngx_http_dato_snapshot_t *snap);

extern ngx_msec_t  ngx_http_dato_latency_bounds[];


#endif /* _NGX_HTTP_DATO_SHM_H_INCLUDED_ */
