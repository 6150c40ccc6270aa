
/*
 * Copyright (C) ngx_http_dato_module authors
 *
 * The batcher's insides, shared by its four rooms and by no other file:
 *
 *   ngx_http_dato_batch.c    batching and calls, retries, give-up, waiters
 *   ngx_http_dato_job.c      following the jobs DatoCMS accepted
 *   ngx_http_dato_journal.c  the zone's journal, dead workers' batches,
 *                            the spool at a stop and at the next start
 *   ngx_http_dato_exit.c     the worker's exit: hurry, then abort
 *
 * A private header rather than ngx_http_dato_batch.h: that one is what the
 * handler, the status page and the module see (the waiter and three
 * calls), and they must not touch a batch, which lives in the shared zone
 * under rules only the rooms keep (see ngx_http_dato_batch_s).  What a
 * room offers the others is declared in its own header, but for the
 * batching room: its own header is the public one, so that is done here.
 */


#ifndef _NGX_HTTP_DATO_BATCH_INT_H_INCLUDED_
#define _NGX_HTTP_DATO_BATCH_INT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_http_dato_batch.h"


/* room for ", environment \"...\", host \"...\"" in a log line */
#define NGX_HTTP_DATO_WHERE_LEN     384

/* link->job while the webhook knows no job of the link's batch */
#define NGX_HTTP_DATO_NO_JOB        ((ngx_uint_t) -1)


#define NGX_HTTP_DATO_BATCH_OPEN      0
#define NGX_HTTP_DATO_BATCH_WAITING   1
#define NGX_HTTP_DATO_BATCH_INFLIGHT  2
#define NGX_HTTP_DATO_BATCH_JOB       3


/* a link's record bits, see ngx_http_dato_link_t */
#define ngx_http_dato_link_set(link, i)                                       \
    (link)->records[(i) >> 6] |= (uint64_t) 1 << ((i) & 63)
#define ngx_http_dato_link_has(link, i)                                       \
    ((link)->records[(i) >> 6] & ((uint64_t) 1 << ((i) & 63)))


/* a webhook waits on a batch; in the webhook's pool */

typedef struct {
    ngx_queue_t                   queue;
    ngx_http_dato_batch_t        *batch;
    ngx_http_dato_waiter_t       *waiter;

    /* the waiter's entry for this batch's job, in waiter->jobs */
    ngx_uint_t                    job;

    /* which of the batch's records are the waiter's: bit i, ids[i] */
    uint64_t                      records[4];
} ngx_http_dato_link_t;


/*
 * A batch lives in the shared zone, not in the worker's heap: while it
 * holds records that were answered 2xx and that DatoCMS has not accepted
 * (queued), it is in the zone's journal, where another worker finds it
 * when its own dies (a crash, the OOM killer, kill -9).  Only its owner
 * touches it otherwise; the fields another worker reads are "owner",
 * "key", "env", "nids" and "ids".
 */

struct ngx_http_dato_batch_s {
    /* in the zone's journal while queued */
    ngx_queue_t                   journal;
    ngx_pid_t                     owner;

    /* the target's token and URL, by which an heir finds its own target */
    uint32_t                      key;

    /* in target->open while the batch fills */
    ngx_queue_t                   queue;

    /* in batcher->batches from birth to end */
    ngx_queue_t                   all;

    /* in target->line while the rate limit holds it (in_line) */
    ngx_queue_t                   line;

    ngx_http_dato_batcher_t      *batcher;
    ngx_http_dato_target_t       *target;

    /*
     * the window, then the rate limit or the backoff, then a guard while
     * a call is out, then the job polls
     */
    ngx_event_t                   timer;

    ngx_queue_t                   waiters;

    /* dato_retry_timeout counts from here, however the batch was held */
    ngx_msec_t                    opened;
    ngx_msec_t                    accepted;
    ngx_msec_t                    poll_delay;
    ngx_uint_t                    attempts;
    ngx_uint_t                    state;

    /* the scheduler's ticket of the call out, see ngx_http_dato_sched.h */
    ngx_uint_t                    ticket;

    /* the answer: a job, its result, or why the batch failed */
    ngx_str_t                     job;
    ngx_uint_t                    job_status;
    ngx_uint_t                    successful;
    ngx_uint_t                    failed;
    ngx_uint_t                    fail_status;
    ngx_str_t                     fail_code;

    /* the status of the last failed attempt, fail_code its code */
    ngx_uint_t                    last_status;

    unsigned                      queued:1;
    unsigned                      journaled:1;
    unsigned                      spooled:1;
    unsigned                      finished:1;
    unsigned                      polling:1;
    unsigned                      in_line:1;

    u_char                        job_buf[NGX_HTTP_DATO_JOB_LEN];
    u_char                        code_buf[NGX_HTTP_DATO_CODE_LEN];

    ngx_str_t                     env;
    u_char                        env_buf[NGX_HTTP_DATO_ENV_MAX_LEN];

    ngx_uint_t                    nids;
    ngx_http_dato_id_t            ids[1];
};


/* one per worker, in its heap */

struct ngx_http_dato_batcher_s {
    ngx_http_dato_curl_t         *bridge;
    ngx_log_t                    *log;
    ngx_shm_zone_t               *zone;

    ngx_queue_t                   batches;

    /* ngx_http_dato_target_t *: where the batches of dead workers go */
    ngx_array_t                  *targets;

    /* dato_spool_file, or empty */
    ngx_str_t                     spool;

    /* looks for them */
    ngx_event_t                   adopt;
    ngx_msec_t                    full_logged;

    ngx_uint_t                    queued;
    ngx_uint_t                    queue_size;
    ngx_uint_t                    jobs;

    /* learns from nginx that the worker exits, see ngx_http_dato_exit.c */
    ngx_connection_t             *watcher;

    /* the timers' data: nginx's debug log reads an fd from it */
    ngx_connection_t              dummy;

    /* the worker is past worker_shutdown_timeout, or is exiting now */
    const char                   *abort_reason;

    /* the worker is exiting: send batches at once */
    unsigned                      hurry:1;
    unsigned                      aborted:1;
    unsigned                      exiting:1;

    /* a publish call failed on the way or with 5xx: said once, at error */
    unsigned                      failing:1;
};


/* what the batching room (ngx_http_dato_batch.c) offers the other rooms */

ngx_int_t ngx_http_dato_batch_put(ngx_http_dato_batcher_t *b,
    ngx_http_dato_target_t *target, ngx_str_t *env,
    ngx_http_dato_parse_str_t *ids, ngx_uint_t n, ngx_http_dato_waiter_t *w);
void ngx_http_dato_batch_send(ngx_http_dato_batch_t *batch);
ngx_msec_t ngx_http_dato_batch_backoff(ngx_http_dato_batch_t *batch);
void ngx_http_dato_batch_notify(ngx_http_dato_batch_t *batch,
    ngx_uint_t final);
void ngx_http_dato_batch_unqueue(ngx_http_dato_batch_t *batch);
void ngx_http_dato_batch_requeue(ngx_http_dato_batch_t *batch);
void ngx_http_dato_batch_free(ngx_http_dato_batch_t *batch);
void ngx_http_dato_batch_refused(ngx_http_dato_batch_t *batch,
    ngx_uint_t status, ngx_str_t *code, ngx_str_t *details,
    const char *why);
void ngx_http_dato_batch_give_up(ngx_http_dato_batch_t *batch,
    ngx_uint_t status, ngx_str_t *code, ngx_str_t *details,
    const char *why);
void ngx_http_dato_batch_log_ids(ngx_http_dato_batch_t *batch,
    ngx_uint_t level, u_char *what, size_t len);
ngx_str_t *ngx_http_dato_batch_where(ngx_http_dato_batch_t *batch,
    ngx_uint_t net, u_char *buf, size_t size, ngx_str_t *where);


#endif /* _NGX_HTTP_DATO_BATCH_INT_H_INCLUDED_ */
