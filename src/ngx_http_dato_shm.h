
/*
 * Copyright (C) ngx_http_dato_module authors
 *
 * The shared zone: what all workers of one nginx must agree on.  The API
 * rate limit of each token (a log of the last calls and the pause that a
 * 429 sets; the zone keeps no token, only a hash of it), and the counters
 * of the status page, which survive reloads.
 */


#ifndef _NGX_HTTP_DATO_SHM_H_INCLUDED_
#define _NGX_HTTP_DATO_SHM_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


/* the most calls per period that dato_rate_limit takes */
#define NGX_HTTP_DATO_RATE_MAX  600


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
    NGX_HTTP_DATO_STATS
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
    ngx_msec_t                    pause;
} ngx_http_dato_snapshot_t;


typedef struct {
    ngx_shm_zone_t               *zone;
    uint32_t                      key;
    ngx_uint_t                    limit;
    ngx_msec_t                    period;
} ngx_http_dato_rate_t;


ngx_shm_zone_t *ngx_http_dato_shm_add(ngx_conf_t *cf);
ngx_msec_t ngx_http_dato_rate_acquire(ngx_http_dato_rate_t *rate,
    ngx_uint_t *slot, ngx_uint_t reserve);
void ngx_http_dato_rate_release(ngx_http_dato_rate_t *rate, ngx_uint_t slot);
void ngx_http_dato_rate_pause(ngx_http_dato_rate_t *rate, ngx_msec_t ms);

void ngx_http_dato_stat_add(ngx_shm_zone_t *zone, ngx_uint_t stat,
    ngx_atomic_int_t n);
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
