
/*
 * Copyright (C) ngx_http_dato_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_http_dato_batch.h"
#include "ngx_http_dato_spool.h"


/* capped exponential backoff between attempts of one batch */
#define NGX_HTTP_DATO_BACKOFF_MIN   500
#define NGX_HTTP_DATO_BACKOFF_MAX   30000

/* job results: first asked for after 1 s, then less and less often */
#define NGX_HTTP_DATO_POLL_MIN      1000
#define NGX_HTTP_DATO_POLL_MAX      30000

/* a link's record bits, see ngx_http_dato_link_t */
#define ngx_http_dato_link_set(link, i)                                       \
    (link)->records[(i) >> 6] |= (uint64_t) 1 << ((i) & 63)
#define ngx_http_dato_link_has(link, i)                                       \
    ((link)->records[(i) >> 6] & ((uint64_t) 1 << ((i) & 63)))

/* how often a worker looks for the batches of workers that died */
#define NGX_HTTP_DATO_ADOPT_EVERY   1000
#define NGX_HTTP_DATO_ADOPT_MAX     16

/* the most jobs a worker follows at once; past it jobs are not followed */
#define NGX_HTTP_DATO_JOBS_MAX      1000

/* how many IDs one error.log line names; lines stay under 2048 bytes */
#define NGX_HTTP_DATO_IDS_PER_LINE  60

/* room for ", environment \"...\", host \"...\"" in a log line */
#define NGX_HTTP_DATO_WHERE_LEN     384

#define NGX_HTTP_DATO_NO_JOB        ((ngx_uint_t) -1)


#define NGX_HTTP_DATO_BATCH_OPEN      0
#define NGX_HTTP_DATO_BATCH_WAITING   1
#define NGX_HTTP_DATO_BATCH_INFLIGHT  2
#define NGX_HTTP_DATO_BATCH_JOB       3


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

    /* learns from nginx that the worker is exiting, see below */
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


static ngx_http_dato_batch_t *ngx_http_dato_batch_open(
    ngx_http_dato_batcher_t *b, ngx_http_dato_target_t *target,
    ngx_str_t *env);
static void ngx_http_dato_batch_send(ngx_http_dato_batch_t *batch);
static void ngx_http_dato_batch_timer(ngx_event_t *ev);
static void ngx_http_dato_batch_answer(void *data,
    ngx_http_dato_client_result_t *res);
static void ngx_http_dato_batch_accepted(ngx_http_dato_batch_t *batch,
    ngx_http_dato_client_result_t *res);
static void ngx_http_dato_batch_poll(ngx_http_dato_batch_t *batch);
static void ngx_http_dato_batch_polled(void *data,
    ngx_http_dato_client_result_t *res);
static void ngx_http_dato_batch_job_end(ngx_http_dato_batch_t *batch,
    ngx_uint_t level, const char *what);
static ngx_msec_t ngx_http_dato_batch_backoff(ngx_http_dato_batch_t *batch);
static ngx_uint_t ngx_http_dato_batch_awaited(ngx_http_dato_batch_t *batch);
static void ngx_http_dato_batch_notify(ngx_http_dato_batch_t *batch,
    ngx_uint_t final);
static void ngx_http_dato_batch_unqueue(ngx_http_dato_batch_t *batch);
static void ngx_http_dato_batch_leave_line(ngx_http_dato_batch_t *batch);
static void ngx_http_dato_batch_free(ngx_http_dato_batch_t *batch);
static ngx_http_dato_link_t *ngx_http_dato_batch_link(
    ngx_http_dato_waiter_t *w, ngx_http_dato_batch_t *batch);
static ngx_http_dato_batch_t *ngx_http_dato_batch_alloc(
    ngx_http_dato_batcher_t *b, ngx_http_dato_target_t *target,
    ngx_str_t *env, ngx_uint_t size, ngx_uint_t evict);
static ngx_int_t ngx_http_dato_batch_evict(ngx_http_dato_batcher_t *b);
static ngx_uint_t ngx_http_dato_batch_any(ngx_uint_t status,
    ngx_str_t *code);
static void ngx_http_dato_batch_refused(ngx_http_dato_batch_t *batch,
    ngx_uint_t status, ngx_str_t *code, ngx_str_t *details,
    const char *why);
static ngx_int_t ngx_http_dato_batch_split(ngx_http_dato_batch_t *batch);
static ngx_int_t ngx_http_dato_batch_relink(ngx_http_dato_batch_t *from,
    ngx_http_dato_batch_t *to, ngx_uint_t first);
static void ngx_http_dato_batch_again(ngx_http_dato_batch_t *batch);
static void ngx_http_dato_batch_job_failed(ngx_http_dato_batch_t *batch,
    ngx_http_dato_client_result_t *res);
static void ngx_http_dato_batch_job_stats(ngx_http_dato_batch_t *batch,
    ngx_uint_t bad);
static void ngx_http_dato_batch_give_up(ngx_http_dato_batch_t *batch,
    ngx_uint_t status, ngx_str_t *code, ngx_str_t *details,
    const char *why);
static void ngx_http_dato_batch_tell_refused(ngx_http_dato_batch_t *batch);
static void ngx_http_dato_batch_log_ids(ngx_http_dato_batch_t *batch,
    ngx_uint_t level, u_char *what, size_t len);
static ngx_str_t *ngx_http_dato_batch_where(ngx_http_dato_batch_t *batch,
    ngx_uint_t net, u_char *buf, size_t size, ngx_str_t *where);
static ngx_int_t ngx_http_dato_batch_put(ngx_http_dato_batcher_t *b,
    ngx_http_dato_target_t *target, ngx_str_t *env,
    ngx_http_dato_parse_str_t *ids, ngx_uint_t n, ngx_http_dato_waiter_t *w);
static void ngx_http_dato_batch_journal(ngx_http_dato_batch_t *batch,
    ngx_uint_t on);
static void ngx_http_dato_batch_adopt(ngx_event_t *ev);
static ngx_uint_t ngx_http_dato_batch_orphan(ngx_queue_t *q);
static void ngx_http_dato_batch_inherit(ngx_http_dato_batcher_t *b,
    ngx_http_dato_batch_t *orphan);
static ngx_http_dato_target_t *ngx_http_dato_batch_target(
    ngx_http_dato_batcher_t *b, uint32_t key);
static void ngx_http_dato_batch_spool(ngx_http_dato_batcher_t *b);
static ngx_int_t ngx_http_dato_batch_unspool(void *data, uint32_t key,
    ngx_str_t *env, ngx_http_dato_parse_str_t *ids, ngx_uint_t n);
static void ngx_http_dato_batch_watch(ngx_event_t *ev);
static void ngx_http_dato_batch_hurry(ngx_http_dato_batcher_t *b);
static void ngx_http_dato_batch_abort(ngx_http_dato_batcher_t *b,
    const char *why);


ngx_http_dato_batcher_t *
ngx_http_dato_batcher_create(ngx_log_t *log, ngx_uint_t queue_size,
    ngx_shm_zone_t *zone, ngx_array_t *targets, ngx_str_t *spool)
{
    ngx_connection_t         *c;
    ngx_http_dato_batcher_t  *b;

    b = ngx_calloc(sizeof(ngx_http_dato_batcher_t), log);
    if (b == NULL) {
        return NULL;
    }

    b->log = log;
    b->zone = zone;
    b->targets = targets;
    b->spool = *spool;
    b->queue_size = queue_size;
    b->dummy.fd = (ngx_socket_t) -1;

    ngx_queue_init(&b->batches);

    b->bridge = ngx_http_dato_curl_create(log);
    if (b->bridge == NULL) {
        ngx_free(b);
        return NULL;
    }

    /*
     * nginx tells an exiting worker's idle connections, and at
     * worker_shutdown_timeout all of them, by calling their read handler
     * with c->close set: a connection without a socket (fd -2 is neither
     * a socket nor the "free" mark -1) is how batches learn it
     */

    c = ngx_get_connection((ngx_socket_t) 0, log);
    if (c == NULL) {
        ngx_http_dato_curl_destroy(b->bridge);
        ngx_free(b);
        return NULL;
    }

    c->fd = (ngx_socket_t) -2;
    c->idle = 1;
    c->data = b;
    c->log = log;
    c->read->log = log;
    c->write->log = log;
    c->read->handler = ngx_http_dato_batch_watch;

    b->watcher = c;

    /* the first look at once: a worker respawned after a crash inherits */

    b->adopt.handler = ngx_http_dato_batch_adopt;
    b->adopt.data = &b->dummy;
    b->adopt.log = log;
    b->adopt.cancelable = 1;

    ngx_http_dato_batch_adopt(&b->adopt);

    /*
     * one worker reads back what the last stop spooled: at start, before
     * any request, so the disk reads cost no webhook anything
     */

    if (b->spool.len && ngx_worker == 0) {
        ngx_http_dato_spool_read(&b->spool, log, ngx_http_dato_batch_unspool,
                                 b);
    }

    return b;
}


void
ngx_http_dato_batcher_destroy(ngx_http_dato_batcher_t *b)
{
    b->exiting = 1;

    ngx_http_dato_batch_abort(b, "the worker process is exiting");

    if (b->adopt.timer_set) {
        ngx_del_timer(&b->adopt);
    }

    b->watcher->fd = (ngx_socket_t) -1;
    ngx_free_connection(b->watcher);

    ngx_http_dato_curl_destroy(b->bridge);

    ngx_free(b);
}


ngx_int_t
ngx_http_dato_batch_add(ngx_http_dato_batcher_t *b,
    ngx_http_dato_target_t *target, ngx_str_t *env,
    ngx_http_dato_parse_str_t *ids, ngx_uint_t n, ngx_http_dato_waiter_t *w,
    ngx_log_t *log)
{
    ngx_int_t  rc;

    if (b->aborted) {
        return NGX_DECLINED;
    }

    /* all or nothing: a refused webhook is sent again by its sender */

    if (b->queued + n > b->queue_size) {
        return NGX_BUSY;
    }

    rc = ngx_http_dato_batch_put(b, target, env, ids, n, w);

    if (rc == NGX_OK && w) {
        w->armed = 1;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, log, 0,
                   "dato: queued %ui records, %ui in this worker",
                   n, b->queued);

    return rc;
}


static ngx_int_t
ngx_http_dato_batch_put(ngx_http_dato_batcher_t *b,
    ngx_http_dato_target_t *target, ngx_str_t *env,
    ngx_http_dato_parse_str_t *ids, ngx_uint_t n, ngx_http_dato_waiter_t *w)
{
    ngx_uint_t              i, j;
    ngx_http_dato_id_t     *id;
    ngx_http_dato_link_t   *link;
    ngx_http_dato_batch_t  *batch;

    batch = NULL;
    link = NULL;

    for (i = 0; i < n; i++) {

        if (batch == NULL) {
            batch = ngx_http_dato_batch_open(b, target, env);
            if (batch == NULL) {

                /* the zone is full: refused like a full queue, retried */
                return NGX_BUSY;
            }
        }

        for (j = 0; j < batch->nids; j++) {
            if (batch->ids[j].len == ids[i].len
                && ngx_memcmp(batch->ids[j].data, ids[i].data, ids[i].len)
                   == 0)
            {
                break;
            }
        }

        if (j == batch->nids) {

            /* counted once written: an heir may read it at any time */

            id = &batch->ids[batch->nids];
            ngx_memcpy(id->data, ids[i].data, ids[i].len);
            id->data[ids[i].len] = '\0';
            id->len = (u_char) ids[i].len;
            batch->nids++;
            b->queued++;
            ngx_http_dato_stat_add(b->zone, NGX_HTTP_DATO_RECORDS_QUEUED, 1);
        }

        if (w && (link == NULL || link->batch != batch)) {
            link = ngx_http_dato_batch_link(w, batch);
            if (link == NULL) {
                return NGX_ERROR;
            }
        }

        if (link) {
            ngx_http_dato_link_set(link, j);
        }

        if (batch->nids == target->batch_size) {
            ngx_http_dato_batch_send(batch);
            batch = NULL;
        }
    }

    if (batch && b->hurry) {
        ngx_http_dato_batch_send(batch);
    }

    return NGX_OK;
}


/* the webhook "w" waits on "batch" too */

static ngx_http_dato_link_t *
ngx_http_dato_batch_link(ngx_http_dato_waiter_t *w,
    ngx_http_dato_batch_t *batch)
{
    ngx_http_dato_link_t  *link, **lp;

    lp = ngx_array_push(&w->links);
    if (lp == NULL) {
        return NULL;
    }

    link = ngx_pcalloc(w->pool, sizeof(ngx_http_dato_link_t));
    if (link == NULL) {
        w->links.nelts--;
        return NULL;
    }

    *lp = link;

    link->batch = batch;
    link->waiter = w;
    link->job = NGX_HTTP_DATO_NO_JOB;
    ngx_queue_insert_tail(&batch->waiters, &link->queue);
    w->pending++;

    return link;
}


ngx_int_t
ngx_http_dato_waiter_init(ngx_http_dato_waiter_t *w, ngx_pool_t *pool)
{
    ngx_pool_cleanup_t  *cln;

    w->pool = pool;

    if (ngx_array_init(&w->links, pool, 2, sizeof(ngx_http_dato_link_t *))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_array_init(&w->jobs, pool, 1, sizeof(ngx_http_dato_job_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_array_init(&w->refused, pool, 1, sizeof(ngx_str_t)) != NGX_OK) {
        return NGX_ERROR;
    }

    /* a webhook that goes away leaves its batches, which go on */

    cln = ngx_pool_cleanup_add(pool, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    cln->handler = (ngx_pool_cleanup_pt) ngx_http_dato_waiter_cancel;
    cln->data = w;

    return NGX_OK;
}


void
ngx_http_dato_waiter_cancel(ngx_http_dato_waiter_t *w)
{
    ngx_uint_t             i;
    ngx_http_dato_link_t  **links;

    links = w->links.elts;

    for (i = 0; i < w->links.nelts; i++) {
        if (links[i]->batch) {
            ngx_queue_remove(&links[i]->queue);
            links[i]->batch = NULL;
        }
    }

    w->armed = 0;
}


static ngx_http_dato_batch_t *
ngx_http_dato_batch_open(ngx_http_dato_batcher_t *b,
    ngx_http_dato_target_t *target, ngx_str_t *env)
{
    ngx_queue_t            *q;
    ngx_http_dato_batch_t  *batch;

    for (q = ngx_queue_head(&target->open);
         q != ngx_queue_sentinel(&target->open);
         q = ngx_queue_next(q))
    {
        batch = ngx_queue_data(q, ngx_http_dato_batch_t, queue);

        /* an empty environment (the primary one) may have no data */

        if (batch->env.len == env->len
            && (env->len == 0
                || ngx_memcmp(batch->env.data, env->data, env->len) == 0))
        {
            return batch;
        }
    }

    batch = ngx_http_dato_batch_alloc(b, target, env, target->batch_size, 1);
    if (batch == NULL) {
        return NULL;
    }

    batch->state = NGX_HTTP_DATO_BATCH_OPEN;
    ngx_queue_insert_tail(&target->open, &batch->queue);

    ngx_add_timer(&batch->timer, target->batch_window);

    return batch;
}


/* stops following this worker's oldest job that no poll is out for */

static ngx_int_t
ngx_http_dato_batch_evict(ngx_http_dato_batcher_t *b)
{
    ngx_queue_t            *q;
    ngx_http_dato_batch_t  *batch;

    for (q = ngx_queue_head(&b->batches);
         q != ngx_queue_sentinel(&b->batches);
         q = ngx_queue_next(q))
    {
        batch = ngx_queue_data(q, ngx_http_dato_batch_t, all);

        if (batch->state == NGX_HTTP_DATO_BATCH_JOB && !batch->polling) {
            ngx_http_dato_stat_add(b->zone, NGX_HTTP_DATO_JOBS_UNFINISHED,
                                   1);
            ngx_http_dato_batch_job_end(batch, NGX_LOG_INFO,
                                        "was not followed to its end: its "
                                        "room in the shared zone went to "
                                        "new records");
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


/* a batch of at most "size" records, queued, in no line yet */

static ngx_http_dato_batch_t *
ngx_http_dato_batch_alloc(ngx_http_dato_batcher_t *b,
    ngx_http_dato_target_t *target, ngx_str_t *env, ngx_uint_t size,
    ngx_uint_t evict)
{
    ngx_http_dato_batch_t  *batch;

    for ( ;; ) {
        batch = ngx_http_dato_shm_alloc(b->zone,
                                        sizeof(ngx_http_dato_batch_t)
                                        + (size - 1)
                                          * sizeof(ngx_http_dato_id_t));

        /*
         * records answered 2xx come before following jobs: a job that
         * DatoCMS accepted gives up its room first, the oldest first
         */

        if (batch || !evict || ngx_http_dato_batch_evict(b) != NGX_OK) {
            break;
        }
    }

    if (batch == NULL) {
        if (ngx_current_msec - b->full_logged > 1000) {
            b->full_logged = ngx_current_msec;
            ngx_log_error(NGX_LOG_ERR, b->log, 0,
                          "dato: the shared zone is full: records are "
                          "refused, raise \"dato_zone_size\"");
        }

        return NULL;
    }

    ngx_memzero(batch, sizeof(ngx_http_dato_batch_t));

    batch->owner = ngx_pid;
    batch->key = target->key;
    batch->batcher = b;
    batch->target = target;
    batch->state = NGX_HTTP_DATO_BATCH_WAITING;
    batch->opened = ngx_current_msec;
    batch->queued = 1;

    batch->env.len = ngx_min(env->len, NGX_HTTP_DATO_ENV_MAX_LEN);
    batch->env.data = batch->env_buf;
    if (batch->env.len) {
        ngx_memcpy(batch->env_buf, env->data, batch->env.len);
    }

    ngx_queue_init(&batch->waiters);
    ngx_queue_insert_tail(&b->batches, &batch->all);

    ngx_http_dato_batch_journal(batch, 1);

    /* not cancelable: a graceful exit waits for the batch to be sent */

    batch->timer.handler = ngx_http_dato_batch_timer;
    batch->timer.data = &b->dummy;
    batch->timer.log = b->log;

    return batch;
}


/*
 * The rate limit serves a worker's batches in the order they came to it:
 * they wait in target->line, and only the first one asks for a call
 * (its timer), so that none is passed over again and again by luckier
 * ones.  When it goes, the next one asks at once.
 */

static void
ngx_http_dato_batch_send(ngx_http_dato_batch_t *batch)
{
    ngx_int_t                 rc;
    ngx_msec_t                wait, left;
    ngx_queue_t              *line;
    ngx_http_dato_batcher_t  *b;

    b = batch->batcher;
    line = &batch->target->line;

    if (batch->timer.timer_set) {
        ngx_del_timer(&batch->timer);
    }

    /* however the records were held, their deadline holds */

    left = batch->opened + batch->target->retry_timeout - ngx_current_msec;

    if ((ngx_msec_int_t) left <= 0) {
        /* the last failure, if any, says what held them */

        ngx_http_dato_batch_give_up(batch, batch->last_status,
                                    &batch->fail_code, NULL,
                                    "dato_retry_timeout has passed while "
                                    "the budget or a pause held them");
        return;
    }

    if (batch->in_line ? ngx_queue_head(line) != &batch->line
                       : !ngx_queue_empty(line))
    {
        /* others are before it: it only wakes for its deadline */
        wait = left;

    } else {
        wait = ngx_http_dato_sched_ask(&batch->target->rate, &batch->ticket,
                                       0);

        if (wait) {

            /* a little spread, so that waiting workers do not wake together */

            wait = ngx_min(wait + (ngx_msec_t) ngx_random() % 20, left);
        }
    }

    if (wait) {

        /*
         * the budget, its pace or a 429 pause holds the call: a batch
         * that is not full keeps taking records meanwhile, so that a busy
         * module makes full batches at the rate the budget allows, and an
         * idle one sends a webhook's records at once
         */

        if (batch->state == NGX_HTTP_DATO_BATCH_OPEN
            && batch->nids == batch->target->batch_size)
        {
            ngx_queue_remove(&batch->queue);
            batch->state = NGX_HTTP_DATO_BATCH_WAITING;
        }

        if (!batch->in_line) {
            ngx_queue_insert_tail(line, &batch->line);
            batch->in_line = 1;
        }

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, b->log, 0,
                       "dato: %ui records wait %M ms for the budget",
                       batch->nids, wait);

        ngx_add_timer(&batch->timer, wait);
        return;
    }

    ngx_http_dato_batch_leave_line(batch);

    if (batch->state == NGX_HTTP_DATO_BATCH_OPEN) {
        ngx_queue_remove(&batch->queue);
    }

    batch->state = NGX_HTTP_DATO_BATCH_INFLIGHT;
    batch->attempts++;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, b->log, 0,
                   "dato: sending %ui records, env \"%V\", attempt %ui",
                   batch->nids, &batch->env, batch->attempts);

    rc = ngx_http_dato_client_publish(b->bridge, &batch->target->client,
                                      &batch->env, batch->ids, batch->nids,
                                      ngx_http_dato_batch_answer, batch,
                                      b->log);

    if (rc != NGX_OK) {
        ngx_http_dato_sched_release(&batch->target->rate, batch->ticket);
    }

    if (rc == NGX_DECLINED) {
        ngx_http_dato_batch_give_up(batch, 0, NULL, NULL,
                                    "the worker process is exiting");
        return;
    }

    if (rc != NGX_OK) {

        /* out of memory now: try again after a backoff */

        batch->state = NGX_HTTP_DATO_BATCH_WAITING;
        ngx_add_timer(&batch->timer, ngx_http_dato_batch_backoff(batch));
        return;
    }

    /* curl times the call out; this timer keeps an exiting worker alive */

    ngx_add_timer(&batch->timer, batch->target->client.timeout + 1000);
}


static void
ngx_http_dato_batch_timer(ngx_event_t *ev)
{
    ngx_http_dato_batch_t  *batch;

    batch = (ngx_http_dato_batch_t *)
                ((u_char *) ev - offsetof(ngx_http_dato_batch_t, timer));

    switch (batch->state) {

    case NGX_HTTP_DATO_BATCH_INFLIGHT:
        ngx_add_timer(ev, 1000);
        return;

    case NGX_HTTP_DATO_BATCH_JOB:
        ngx_http_dato_batch_poll(batch);
        return;

    default:
        ngx_http_dato_batch_send(batch);
    }
}


static void
ngx_http_dato_batch_answer(void *data, ngx_http_dato_client_result_t *res)
{
    ngx_http_dato_batch_t *batch = data;

    u_char                    buf[NGX_HTTP_DATO_WHERE_LEN];
    ngx_str_t                 where;
    ngx_msec_t                delay, pause;
    ngx_http_dato_batcher_t  *b;

    b = batch->batcher;

    pause = ngx_http_dato_sched_report(&batch->target->rate, batch->ticket,
                                       res->status, res->rate_limit,
                                       res->rate_remaining, res->rate_reset,
                                       b->log);

    if (batch->timer.timer_set) {
        ngx_del_timer(&batch->timer);
    }

    if (res->outcome == NGX_HTTP_DATO_CLIENT_ABORTED || b->aborted) {
        ngx_http_dato_batch_give_up(batch, 0, NULL, NULL,
                                    b->abort_reason ? b->abort_reason
                                    : "the worker process is exiting");
        return;
    }

    ngx_http_dato_stat_call(b->zone, NGX_HTTP_DATO_CALLS_PUBLISH,
                            res->status, &res->code);

    if (res->status >= 200 && res->status < 300) {
        if (b->failing) {
            b->failing = 0;
            ngx_log_error(NGX_LOG_WARN, b->log, 0,
                          "dato: the API accepts calls again");
        }

        ngx_log_error(NGX_LOG_INFO, b->log, 0,
                      "dato: %ui record%s sent, job \"%V\"%V",
                      batch->nids, ngx_http_dato_plural(batch->nids),
                      &res->job_id,
                      ngx_http_dato_batch_where(batch, 0, buf, sizeof(buf),
                                                &where));

        ngx_http_dato_batch_accepted(batch, res);
        return;
    }

    if (res->status == 429 || res->status >= 500 || res->transient) {

        /* an API that fails: the first failure is an error, not each */

        if ((res->status == 0 || res->status >= 500) && !b->failing) {
            b->failing = 1;
            ngx_log_error(NGX_LOG_ERR, b->log, 0,
                          "dato: the API fails (%ui %V%V): calls are "
                          "retried until dato_retry_timeout, and this is "
                          "logged once until it accepts one again",
                          res->status, &res->code,
                          ngx_http_dato_batch_where(batch, res->status == 0,
                                                    buf, sizeof(buf),
                                                    &where));
        }

        /* a 429 pauses every worker's calls with this token: wait it out */

        delay = res->status == 429 ? pause
                                   : ngx_http_dato_batch_backoff(batch);

        if (ngx_current_msec - batch->opened + delay
            <= batch->target->retry_timeout)
        {
            ngx_log_error(NGX_LOG_WARN, b->log, 0,
                          "dato: bulk publish of %ui record%s failed "
                          "(%ui %V%V), retrying in %M ms",
                          batch->nids, ngx_http_dato_plural(batch->nids),
                          res->status, &res->code,
                          ngx_http_dato_batch_where(batch, res->status == 0,
                                                    buf, sizeof(buf),
                                                    &where),
                          delay);

            ngx_http_dato_stat_add(b->zone, NGX_HTTP_DATO_RETRIES, 1);

            batch->last_status = res->status;
            batch->fail_code.len = ngx_min(res->code.len,
                                           NGX_HTTP_DATO_CODE_LEN);
            batch->fail_code.data = batch->code_buf;

            if (batch->fail_code.len) {
                ngx_memcpy(batch->code_buf, res->code.data,
                           batch->fail_code.len);
            }

            batch->state = NGX_HTTP_DATO_BATCH_WAITING;
            ngx_add_timer(&batch->timer, delay);
            return;
        }

        ngx_http_dato_batch_give_up(batch, res->status, &res->code,
                                    &res->details,
                                    "dato_retry_timeout has passed");
        return;
    }

    if (res->status >= 300 && res->status < 400) {

        /* never followed, never retried: dato_api_url is wrong */

        ngx_http_dato_batch_give_up(batch, res->status, &res->code,
                                    &res->details,
                                    "the API redirected the call to the "
                                    "host in details: check dato_api_url");
        return;
    }

    if (res->status == 0) {
        ngx_http_dato_batch_give_up(batch, 0, &res->code, NULL,
                                    "the call cannot succeed");
        return;
    }

    ngx_http_dato_batch_refused(batch, res->status, &res->code,
                                &res->details, "DatoCMS refused the call");
}


/* DatoCMS took the batch: its webhooks learn the job; then follow it */

static void
ngx_http_dato_batch_accepted(ngx_http_dato_batch_t *batch,
    ngx_http_dato_client_result_t *res)
{
    ngx_http_dato_batcher_t  *b;

    b = batch->batcher;

    /* the client took only a job ID made of ID characters, and whole */

    batch->job.len = res->job_id.len;
    batch->job.data = batch->job_buf;

    if (batch->job.len) {
        ngx_memcpy(batch->job_buf, res->job_id.data, batch->job.len);
    }

    if (res->bad_job) {
        ngx_log_error(NGX_LOG_ERR, b->log, 0,
                      "dato: the API accepted %ui record%s with a job ID "
                      "that is not an ID (too long or not ID characters): "
                      "refused, the job is not followed",
                      batch->nids, ngx_http_dato_plural(batch->nids));
    }

    batch->accepted = ngx_current_msec;

    ngx_http_dato_batch_unqueue(batch);

    ngx_http_dato_stat_add(b->zone, NGX_HTTP_DATO_RECORDS_SENT, batch->nids);
    ngx_http_dato_stat_latency(b->zone, NGX_HTTP_DATO_LATENCY_JOB_ID,
                               batch->accepted - batch->opened);

    if (!batch->target->job_poll || batch->job.len == 0
        || b->jobs >= NGX_HTTP_DATO_JOBS_MAX || b->aborted)
    {
        ngx_http_dato_batch_notify(batch, 1);
        ngx_http_dato_batch_free(batch);
        return;
    }

    batch->state = NGX_HTTP_DATO_BATCH_JOB;
    batch->poll_delay = NGX_HTTP_DATO_POLL_MIN;
    b->jobs++;

    ngx_http_dato_stat_add(b->zone, NGX_HTTP_DATO_JOBS_PENDING, 1);
    ngx_http_dato_stat_job(b->zone, &batch->job, batch->nids, 0, 0, 0);

    ngx_http_dato_batch_notify(batch, 0);

    /* following a job never keeps an exiting worker alive */

    batch->timer.cancelable = 1;
    ngx_add_timer(&batch->timer, batch->poll_delay);
}


static void
ngx_http_dato_batch_poll(ngx_http_dato_batch_t *batch)
{
    ngx_int_t                 rc;
    ngx_msec_t                wait;
    ngx_uint_t                spare;
    ngx_http_dato_batcher_t  *b;

    b = batch->batcher;

    if (ngx_current_msec - batch->accepted >= batch->target->job_timeout) {
        ngx_http_dato_batch_job_end(batch, NGX_LOG_ERR,
                                    "did not finish within "
                                    "dato_job_timeout: the fate of its "
                                    "records is not known");
        return;
    }

    /*
     * polls count against the API's limit like every other call, and give
     * way to publishes: a quarter of the budget stays free for them
     */

    spare = ngx_max(ngx_http_dato_sched_limit(&batch->target->rate) / 4, 1);

    wait = ngx_http_dato_sched_ask(&batch->target->rate, &batch->ticket,
                                   spare);

    if (wait) {
        ngx_add_timer(&batch->timer, wait + (ngx_msec_t) ngx_random() % 20);
        return;
    }

    rc = ngx_http_dato_client_job(b->bridge, &batch->target->client,
                                  &batch->env, &batch->job,
                                  ngx_http_dato_batch_polled, batch, b->log);

    if (rc != NGX_OK) {
        ngx_http_dato_sched_release(&batch->target->rate, batch->ticket);
        ngx_add_timer(&batch->timer, batch->poll_delay);
        return;
    }

    batch->polling = 1;
}


static void
ngx_http_dato_batch_polled(void *data, ngx_http_dato_client_result_t *res)
{
    ngx_http_dato_batch_t *batch = data;

    ngx_msec_t                left;
    ngx_http_dato_batcher_t  *b;

    b = batch->batcher;
    batch->polling = 0;

    (void) ngx_http_dato_sched_report(&batch->target->rate, batch->ticket,
                                      res->status, res->rate_limit,
                                      res->rate_remaining, res->rate_reset,
                                      b->log);

    if (res->outcome == NGX_HTTP_DATO_CLIENT_ABORTED || b->aborted) {
        ngx_http_dato_batch_job_end(batch, NGX_LOG_INFO,
                                    "was not followed to its end: the "
                                    "worker process is exiting");
        return;
    }

    ngx_http_dato_stat_call(b->zone, NGX_HTTP_DATO_CALLS_JOB, res->status,
                            &res->code);

    if (res->status == 200) {
        batch->finished = 1;
        batch->job_status = res->job_status ? res->job_status : 1;

        /* hostile input too: the counts can only be of the batch's records */

        batch->successful = ngx_min(res->successful, batch->nids);
        batch->failed = ngx_min(res->failed, batch->nids - batch->successful);

        /* a job that failed as a whole published what it says, no more */

        if (batch->job_status < 200 || batch->job_status > 299) {
            batch->failed = batch->nids - batch->successful;
        }

        if (batch->failed || batch->job_status < 200
            || batch->job_status > 299)
        {
            ngx_http_dato_batch_job_failed(batch, res);
            return;
        }

        ngx_http_dato_batch_job_end(batch, NGX_LOG_INFO, "finished");
        return;
    }

    /*
     * 404: the job still runs; anything else is asked again later too (a
     * 429 has paused the token's calls).  A webhook that waits for the
     * result is worth a poll a second, as the official clients poll;
     * otherwise polls come less and less often.
     */

    if (!ngx_http_dato_batch_awaited(batch)) {
        batch->poll_delay = ngx_min(batch->poll_delay * 2,
                                    NGX_HTTP_DATO_POLL_MAX);
    }

    /* the last poll comes at dato_job_timeout, not a long interval after */

    left = batch->target->job_timeout - (ngx_current_msec - batch->accepted);

    ngx_add_timer(&batch->timer,
                  (ngx_msec_int_t) left > 0 ? ngx_min(batch->poll_delay, left)
                                            : 0);
}


/*
 * A followed job is done with: finished, timed out, or left behind by an
 * exiting worker.  One log line says so; a job that failed names its
 * records.
 */

static void
ngx_http_dato_batch_job_end(ngx_http_dato_batch_t *batch, ngx_uint_t level,
    const char *what)
{
    u_char                   *p, line[384], buf[NGX_HTTP_DATO_WHERE_LEN];
    ngx_str_t                 where;
    ngx_msec_t                ms;
    ngx_uint_t                bad;
    ngx_http_dato_batcher_t  *b;

    b = batch->batcher;
    ms = ngx_current_msec - batch->accepted;
    bad = (level != NGX_LOG_INFO);

    (void) ngx_http_dato_batch_where(batch, 0, buf, sizeof(buf), &where);

    if (batch->finished) {
        p = ngx_snprintf(line, sizeof(line),
                         "dato: job \"%V\" %s: status %ui, %ui record%s, "
                         "%ui successful, %ui failed, %M.%03M s%V",
                         &batch->job, what, batch->job_status, batch->nids,
                         ngx_http_dato_plural(batch->nids),
                         batch->successful, batch->failed,
                         ms / 1000, ms % 1000, &where);

        ngx_http_dato_batch_job_stats(batch, bad);

    } else {
        p = ngx_snprintf(line, sizeof(line),
                         "dato: job \"%V\" of %ui record%s %s (%M s%V)",
                         &batch->job, batch->nids,
                         ngx_http_dato_plural(batch->nids), what, ms / 1000,
                         &where);

        if (bad) {
            ngx_http_dato_stat_add(b->zone, NGX_HTTP_DATO_JOBS_UNFINISHED, 1);
        }
    }

    if (bad) {
        ngx_http_dato_batch_log_ids(batch, level, line, p - line);

    } else {
        ngx_log_error(level, b->log, 0, "%*s", p - line, line);
    }

    ngx_http_dato_batch_notify(batch, 1);
    ngx_http_dato_batch_free(batch);
}


static ngx_msec_t
ngx_http_dato_batch_backoff(ngx_http_dato_batch_t *batch)
{
    ngx_uint_t  shift;
    ngx_msec_t  delay;

    shift = ngx_min(batch->attempts, 16);
    delay = ngx_min((ngx_msec_t) NGX_HTTP_DATO_BACKOFF_MIN << (shift - 1),
                    NGX_HTTP_DATO_BACKOFF_MAX);

    /* full jitter on the upper half, so that workers do not march */

    return delay / 2 + (ngx_msec_t) ngx_random() % (delay / 2 + 1);
}


/* some webhook waits for the job's result, not only for its ID */

static ngx_uint_t
ngx_http_dato_batch_awaited(ngx_http_dato_batch_t *batch)
{
    ngx_queue_t           *q;
    ngx_http_dato_link_t  *link;

    for (q = ngx_queue_head(&batch->waiters);
         q != ngx_queue_sentinel(&batch->waiters);
         q = ngx_queue_next(q))
    {
        link = ngx_queue_data(q, ngx_http_dato_link_t, queue);

        if (link->waiter->result) {
            return 1;
        }
    }

    return 0;
}


/*
 * The webhooks that wait on the batch learn its job, its result or its
 * failure.  Those that wait for the job's result stay linked until the
 * final notice.
 */

static void
ngx_http_dato_batch_notify(ngx_http_dato_batch_t *batch, ngx_uint_t final)
{
    ngx_queue_t              *q, *next;
    ngx_http_dato_job_t      *job;
    ngx_http_dato_link_t     *link;
    ngx_http_dato_waiter_t   *w;
    ngx_http_dato_batcher_t  *b;

    b = batch->batcher;

    for (q = ngx_queue_head(&batch->waiters);
         q != ngx_queue_sentinel(&batch->waiters);
         q = next)
    {
        next = ngx_queue_next(q);

        link = ngx_queue_data(q, ngx_http_dato_link_t, queue);
        w = link->waiter;

        if (batch->job.len && link->job == NGX_HTTP_DATO_NO_JOB) {
            job = ngx_array_push(&w->jobs);

            if (job) {
                ngx_memzero(job, sizeof(ngx_http_dato_job_t));
                job->id.data = ngx_pstrdup(w->pool, &batch->job);
                job->id.len = job->id.data ? batch->job.len : 0;
                link->job = w->jobs.nelts - 1;
            }
        }

        if (!final && w->result) {
            continue;
        }

        if (batch->finished && link->job != NGX_HTTP_DATO_NO_JOB) {
            job = (ngx_http_dato_job_t *) w->jobs.elts + link->job;
            job->status = batch->job_status;
            job->successful = batch->successful;
            job->failed = batch->failed;
        }

        if (batch->fail_status && w->fail_status == 0) {
            w->fail_status = batch->fail_status;

            if (batch->fail_code.len) {
                w->code.data = ngx_pstrdup(w->pool, &batch->fail_code);
                w->code.len = w->code.data ? batch->fail_code.len : 0;
            }
        }

        ngx_queue_remove(q);
        link->batch = NULL;
        w->pending--;

        if (w->pending == 0 && w->armed && !b->exiting) {
            w->handler(w);
        }
    }
}


static void
ngx_http_dato_batch_unqueue(ngx_http_dato_batch_t *batch)
{
    ngx_http_dato_batcher_t  *b;

    if (!batch->queued) {
        return;
    }

    b = batch->batcher;

    batch->queued = 0;
    b->queued -= batch->nids;

    ngx_http_dato_stat_add(b->zone, NGX_HTTP_DATO_RECORDS_QUEUED,
                           -(ngx_atomic_int_t) batch->nids);

    ngx_http_dato_batch_journal(batch, 0);
}


static void
ngx_http_dato_batch_journal(ngx_http_dato_batch_t *batch, ngx_uint_t on)
{
    if (batch->journaled != on) {
        batch->journaled = on;
        ngx_http_dato_shm_journal(batch->batcher->zone, &batch->journal, on);
    }
}


/* out of target->line; if it was first, the next one asks at once */

static void
ngx_http_dato_batch_leave_line(ngx_http_dato_batch_t *batch)
{
    ngx_queue_t            *line;
    ngx_http_dato_batch_t  *next;

    if (!batch->in_line) {
        return;
    }

    line = &batch->target->line;

    if (ngx_queue_head(line) == &batch->line
        && ngx_queue_next(&batch->line) != ngx_queue_sentinel(line))
    {
        next = ngx_queue_data(ngx_queue_next(&batch->line),
                              ngx_http_dato_batch_t, line);

        if (next->timer.timer_set) {
            ngx_del_timer(&next->timer);
        }

        ngx_add_timer(&next->timer, 0);
    }

    ngx_queue_remove(&batch->line);
    batch->in_line = 0;
}


static void
ngx_http_dato_batch_free(ngx_http_dato_batch_t *batch)
{
    ngx_http_dato_batcher_t  *b;

    b = batch->batcher;

    ngx_http_dato_batch_leave_line(batch);

    if (batch->state == NGX_HTTP_DATO_BATCH_OPEN) {
        ngx_queue_remove(&batch->queue);
    }

    if (batch->state == NGX_HTTP_DATO_BATCH_JOB) {
        b->jobs--;
        ngx_http_dato_stat_add(b->zone, NGX_HTTP_DATO_JOBS_PENDING, -1);
    }

    if (batch->timer.timer_set) {
        ngx_del_timer(&batch->timer);
    }

    ngx_http_dato_batch_unqueue(batch);
    ngx_http_dato_batch_journal(batch, 0);
    ngx_queue_remove(&batch->all);

    ngx_http_dato_shm_free(b->zone, batch);
}


/*
 * The promise: a record answered 2xx ends published or is named here,
 * at error level, with the reason.
 */

static void
ngx_http_dato_batch_give_up(ngx_http_dato_batch_t *batch, ngx_uint_t status,
    ngx_str_t *code, ngx_str_t *details, const char *why)
{
    u_char                   *p, *last, line[640];
    u_char                    buf[NGX_HTTP_DATO_WHERE_LEN];
    ngx_str_t                 none = ngx_string("-");
    ngx_str_t                 where;
    ngx_http_dato_batcher_t  *b;

    b = batch->batcher;

    batch->fail_status = status ? status : NGX_HTTP_DATO_NO_ANSWER;

    if (batch->spooled) {

        /* not given up: in the spool file, sent after the next start */

        ngx_http_dato_batch_notify(batch, 1);
        ngx_http_dato_batch_free(batch);
        return;
    }

    if (code && code->len && code->data != batch->code_buf) {
        batch->fail_code.len = ngx_min(code->len, NGX_HTTP_DATO_CODE_LEN);
        batch->fail_code.data = batch->code_buf;
        ngx_memcpy(batch->code_buf, code->data, batch->fail_code.len);
    }

    last = line + sizeof(line);

    p = ngx_slprintf(line, last,
                     "dato: gave up publishing %ui record%s after %ui "
                     "attempt%s (%s; status %ui, code %V",
                     batch->nids, ngx_http_dato_plural(batch->nids),
                     batch->attempts, ngx_http_dato_plural(batch->attempts),
                     why, status,
                     batch->fail_code.len ? &batch->fail_code : &none);

    if (details && details->len) {
        p = ngx_slprintf(p, last, ", details %V", details);
    }

    p = ngx_slprintf(p, last, "%V",
                     ngx_http_dato_batch_where(batch,
                                               status == 0 && code
                                               && code->len,
                                               buf, sizeof(buf), &where));

    if (batch->job.len) {
        p = ngx_slprintf(p, last, ", job \"%V\"", &batch->job);
    }

    p = ngx_slprintf(p, last, ")");

    ngx_http_dato_batch_log_ids(batch, NGX_LOG_ERR, line, p - line);

    ngx_http_dato_stat_add(b->zone, NGX_HTTP_DATO_RECORDS_GIVEN_UP,
                           batch->nids);

    ngx_http_dato_batch_tell_refused(batch);
    ngx_http_dato_batch_notify(batch, 1);
    ngx_http_dato_batch_free(batch);
}


/* each waiting webhook learns which of its own records were given up */

static void
ngx_http_dato_batch_tell_refused(ngx_http_dato_batch_t *batch)
{
    ngx_str_t               *id;
    ngx_uint_t               i;
    ngx_queue_t             *q;
    ngx_http_dato_link_t    *link;
    ngx_http_dato_waiter_t  *w;

    for (q = ngx_queue_head(&batch->waiters);
         q != ngx_queue_sentinel(&batch->waiters);
         q = ngx_queue_next(q))
    {
        link = ngx_queue_data(q, ngx_http_dato_link_t, queue);
        w = link->waiter;

        for (i = 0; i < batch->nids; i++) {
            if (!ngx_http_dato_link_has(link, i)) {
                continue;
            }

            id = ngx_array_push(&w->refused);
            if (id == NULL) {
                return;
            }

            id->len = batch->ids[i].len;
            id->data = ngx_pnalloc(w->pool, id->len);

            if (id->data == NULL) {
                w->refused.nelts--;
                return;
            }

            ngx_memcpy(id->data, batch->ids[i].data, id->len);
        }
    }
}


/*
 * DatoCMS refused the batch for good, in its answer or in its job's
 * result.  An error that any batch would get (the token, the site, the
 * headers) gives up the batch in one line; one that may be about some of
 * its records splits it in halves, down to the refused records alone,
 * so that one record cannot sink the others: about 2 * log2(n) calls per
 * refused record, all through the scheduler.
 */

static void
ngx_http_dato_batch_refused(ngx_http_dato_batch_t *batch, ngx_uint_t status,
    ngx_str_t *code, ngx_str_t *details, const char *why)
{
    u_char     buf[NGX_HTTP_DATO_WHERE_LEN];
    ngx_str_t  where;

    if (batch->nids > 1 && !ngx_http_dato_batch_any(status, code)
        && !batch->batcher->aborted)
    {
        ngx_log_error(NGX_LOG_WARN, batch->batcher->log, 0,
                      "dato: %s (status %ui, code %V%V): sending its %ui "
                      "record%s again in halves, to find the refused ones",
                      why, status, code,
                      ngx_http_dato_batch_where(batch, 0, buf, sizeof(buf),
                                                &where),
                      batch->nids, ngx_http_dato_plural(batch->nids));

        if (ngx_http_dato_batch_split(batch) == NGX_OK) {
            return;
        }
    }

    ngx_http_dato_batch_give_up(batch, status, code, details, why);
}


/* errors that are not about records: splitting would only repeat them */

static ngx_uint_t
ngx_http_dato_batch_any(ngx_uint_t status, ngx_str_t *code)
{
    ngx_str_t  *c;

    static ngx_str_t  any[] = {
        ngx_string("INSUFFICIENT_PERMISSIONS"),
        ngx_string("INVALID_API_VERSION"),
        ngx_string("INVALID_AUTHORIZATION_HEADER"),
        ngx_string("INVALID_ACCEPT_HEADER"),
        ngx_string("INVALID_CONTENT_TYPE_HEADER"),
        ngx_string("INVALID_ENVIRONMENT"),
        ngx_string("ENVIRONMENT_NOT_READY"),
        ngx_string("ENVIRONMENT_IN_READ_ONLY_MODE"),
        ngx_string("INVALID_ENDPOINT"),
        ngx_string("INVALID_JSON_BODY"),
        ngx_string("DEACTIVATED_SITE"),
        ngx_string("PLAN_UPGRADE_REQUIRED"),
        ngx_string("SITE_NOT_READY"),
        ngx_string("MAINTENANCE_MODE"),
        ngx_string("PLATFORM_SCHEDULED_MAINTENANCE"),
        ngx_string("NON_JSON_ANSWER"),
        ngx_null_string
    };

    if (status == 401 || status == 403 || status == 405 || status == 413
        || status == 415)
    {
        return 1;
    }

    for (c = any; c->len; c++) {
        if (code->len == c->len
            && ngx_strncmp(code->data, c->data, c->len) == 0)
        {
            return 1;
        }
    }

    return 0;
}


/*
 * Two halves take the batch's records, its deadline and its webhooks
 * (each only where its own records went), and wait in line for calls.
 */

static ngx_int_t
ngx_http_dato_batch_split(ngx_http_dato_batch_t *batch)
{
    ngx_uint_t                i, n[2], first[2];
    ngx_http_dato_link_t     *link;
    ngx_http_dato_batch_t    *half[2];
    ngx_http_dato_batcher_t  *b;

    b = batch->batcher;

    first[0] = 0;
    n[0] = batch->nids / 2;
    first[1] = n[0];
    n[1] = batch->nids - n[0];

    half[0] = ngx_http_dato_batch_alloc(b, batch->target, &batch->env, n[0],
                                        0);
    if (half[0] == NULL) {
        return NGX_ERROR;
    }

    half[1] = ngx_http_dato_batch_alloc(b, batch->target, &batch->env, n[1],
                                        0);
    if (half[1] == NULL) {
        half[0]->queued = 0;
        ngx_http_dato_batch_free(half[0]);
        return NGX_ERROR;
    }

    for (i = 0; i < 2; i++) {
        half[i]->nids = n[i];
        ngx_memcpy(half[i]->ids, &batch->ids[first[i]],
                   n[i] * sizeof(ngx_http_dato_id_t));

        half[i]->opened = batch->opened;
        half[i]->attempts = batch->attempts;

        if (ngx_http_dato_batch_relink(batch, half[i], first[i]) != NGX_OK) {

            /* a webhook may not learn all; its records go on the same */

            ngx_log_error(NGX_LOG_ALERT, b->log, 0,
                          "dato: no memory to follow a split batch's "
                          "webhooks");
        }
    }

    /* the halves hold the records now: the queue's count moves to them */

    if (batch->queued) {
        batch->queued = 0;

    } else {
        b->queued += batch->nids;
        ngx_http_dato_stat_add(b->zone, NGX_HTTP_DATO_RECORDS_QUEUED,
                               batch->nids);
    }

    /* the webhooks wait on the halves: none is woken by the parent */

    while (!ngx_queue_empty(&batch->waiters)) {
        link = ngx_queue_data(ngx_queue_head(&batch->waiters),
                              ngx_http_dato_link_t, queue);
        ngx_queue_remove(&link->queue);
        link->batch = NULL;
        link->waiter->pending--;
    }

    ngx_http_dato_batch_free(batch);

    ngx_http_dato_batch_send(half[0]);
    ngx_http_dato_batch_send(half[1]);

    return NGX_OK;
}


/*
 * Links each webhook of "from" whose records include some of "to"'s
 * (from's records "first" on) to "to"; a job it already knew of is
 * superseded by the new calls' jobs.
 */

static ngx_int_t
ngx_http_dato_batch_relink(ngx_http_dato_batch_t *from,
    ngx_http_dato_batch_t *to, ngx_uint_t first)
{
    ngx_uint_t               i;
    ngx_queue_t             *q;
    ngx_http_dato_job_t     *job;
    ngx_http_dato_link_t    *link, *nl;
    ngx_http_dato_waiter_t  *w;

    for (q = ngx_queue_head(&from->waiters);
         q != ngx_queue_sentinel(&from->waiters);
         q = ngx_queue_next(q))
    {
        link = ngx_queue_data(q, ngx_http_dato_link_t, queue);
        w = link->waiter;
        nl = NULL;

        for (i = 0; i < to->nids; i++) {
            if (!ngx_http_dato_link_has(link, first + i)) {
                continue;
            }

            if (nl == NULL) {
                nl = ngx_http_dato_batch_link(w, to);
                if (nl == NULL) {
                    return NGX_ERROR;
                }
            }

            ngx_http_dato_link_set(nl, i);
        }

        if (link->job != NGX_HTTP_DATO_NO_JOB) {
            job = (ngx_http_dato_job_t *) w->jobs.elts + link->job;
            job->superseded = 1;
        }
    }

    return NGX_OK;
}


/*
 * A job failed in a way that may pass (a 5xx, a transient error): its
 * batch goes back in the queue to be sent again, whole, within
 * dato_retry_timeout.
 */

static void
ngx_http_dato_batch_again(ngx_http_dato_batch_t *batch)
{
    ngx_queue_t              *q;
    ngx_http_dato_job_t      *job;
    ngx_http_dato_link_t     *link;
    ngx_http_dato_batcher_t  *b;

    b = batch->batcher;

    for (q = ngx_queue_head(&batch->waiters);
         q != ngx_queue_sentinel(&batch->waiters);
         q = ngx_queue_next(q))
    {
        link = ngx_queue_data(q, ngx_http_dato_link_t, queue);

        if (link->job != NGX_HTTP_DATO_NO_JOB) {
            job = (ngx_http_dato_job_t *) link->waiter->jobs.elts + link->job;
            job->superseded = 1;
            link->job = NGX_HTTP_DATO_NO_JOB;
        }
    }

    b->jobs--;
    ngx_http_dato_stat_add(b->zone, NGX_HTTP_DATO_JOBS_PENDING, -1);

    batch->state = NGX_HTTP_DATO_BATCH_WAITING;
    batch->timer.cancelable = 0;
    batch->finished = 0;
    batch->job.len = 0;

    batch->queued = 1;
    b->queued += batch->nids;
    ngx_http_dato_stat_add(b->zone, NGX_HTTP_DATO_RECORDS_QUEUED,
                           batch->nids);

    ngx_http_dato_batch_journal(batch, 1);
}


/*
 * A job whose status is not 2xx, or that failed some records, is handled
 * as the same refusal of the call would be: sent again when the error may
 * pass, split down to the records that still fail otherwise (publishing a
 * published record again is harmless).
 */

static void
ngx_http_dato_batch_job_failed(ngx_http_dato_batch_t *batch,
    ngx_http_dato_client_result_t *res)
{
    u_char                   *p, line[256], buf[NGX_HTTP_DATO_WHERE_LEN];
    ngx_str_t                 code, where;
    ngx_msec_t                delay;
    ngx_uint_t                status, transient;
    ngx_http_dato_batcher_t  *b;

    b = batch->batcher;
    status = batch->job_status;

    p = ngx_snprintf(line, sizeof(line), "DatoCMS's job \"%V\" failed "
                     "%ui of %ui record%s", &batch->job, batch->failed,
                     batch->nids, ngx_http_dato_plural(batch->nids));
    *p = '\0';

    ngx_http_dato_batch_job_stats(batch, 1);

    if (res->code.len) {
        code = res->code;

    } else {
        ngx_str_set(&code, "-");
    }

    transient = (status >= 500 || status == 429 || res->transient);

    if (!transient) {
        ngx_http_dato_batch_refused(batch, status, &code, &res->details,
                                    (char *) line);
        return;
    }

    ngx_http_dato_batch_again(batch);

    delay = ngx_http_dato_batch_backoff(batch);

    if (ngx_current_msec - batch->opened + delay
        > batch->target->retry_timeout)
    {
        ngx_http_dato_batch_give_up(batch, status, &code, &res->details,
                                    "dato_retry_timeout has passed");
        return;
    }

    ngx_log_error(NGX_LOG_WARN, b->log, 0,
                  "dato: %s (status %ui, code %V%V), sending them again in "
                  "%M ms", line, status, &code,
                  ngx_http_dato_batch_where(batch, 0, buf, sizeof(buf),
                                            &where),
                  delay);

    ngx_http_dato_stat_add(b->zone, NGX_HTTP_DATO_RETRIES, 1);

    ngx_add_timer(&batch->timer, delay);
}


/* a followed job has finished, well or not */

static void
ngx_http_dato_batch_job_stats(ngx_http_dato_batch_t *batch, ngx_uint_t bad)
{
    ngx_http_dato_batcher_t  *b;

    b = batch->batcher;

    ngx_http_dato_stat_add(b->zone, bad ? NGX_HTTP_DATO_JOBS_FAILED
                                        : NGX_HTTP_DATO_JOBS_DONE, 1);
    ngx_http_dato_stat_add(b->zone, NGX_HTTP_DATO_RECORDS_PUBLISHED,
                           batch->successful);
    ngx_http_dato_stat_add(b->zone, NGX_HTTP_DATO_RECORDS_FAILED,
                           batch->failed);
    ngx_http_dato_stat_latency(b->zone, NGX_HTTP_DATO_LATENCY_JOB_DONE,
                               ngx_current_msec - batch->opened);
    ngx_http_dato_stat_job(b->zone, &batch->job, batch->nids,
                           batch->job_status, batch->successful,
                           batch->failed);
}


static void
ngx_http_dato_batch_log_ids(ngx_http_dato_batch_t *batch, ngx_uint_t level,
    u_char *what, size_t len)
{
    u_char      *p, *last;
    u_char       line[NGX_HTTP_DATO_IDS_PER_LINE
                      * (NGX_HTTP_DATO_ID_MAX_LEN + 1)];
    ngx_uint_t   i, part, parts;

    parts = (batch->nids + NGX_HTTP_DATO_IDS_PER_LINE - 1)
            / NGX_HTTP_DATO_IDS_PER_LINE;

    for (part = 0; part < parts; part++) {
        p = line;
        last = line + sizeof(line);

        for (i = part * NGX_HTTP_DATO_IDS_PER_LINE;
             i < batch->nids && i < (part + 1) * NGX_HTTP_DATO_IDS_PER_LINE;
             i++)
        {
            p = ngx_slprintf(p, last, "%s%s", p == line ? "" : " ",
                             batch->ids[i].data);
        }

        ngx_log_error(level, batch->batcher->log, 0,
                      "%*s, records (part %ui of %ui): %*s",
                      len, what, part + 1, parts, p - line, line);
    }
}


/*
 * What a log line adds about a batch: ", environment \"sandbox\"" when it
 * is not of the primary environment, and ", host \"site-api.datocms.com\""
 * after a network error ("net"); empty otherwise.
 */

static ngx_str_t *
ngx_http_dato_batch_where(ngx_http_dato_batch_t *batch, ngx_uint_t net,
    u_char *buf, size_t size, ngx_str_t *where)
{
    u_char     *p, *last, *host, *end;
    ngx_str_t  *url;

    p = buf;
    last = buf + size;

    if (batch->env.len) {
        p = ngx_slprintf(p, last, ", environment \"%V\"", &batch->env);
    }

    if (net && batch->target) {
        url = &batch->target->client.base_url;

        host = ngx_strlcasestrn(url->data, url->data + url->len,
                                (u_char *) "://", 3 - 1);
        host = host ? host + 3 : url->data;

        end = ngx_strlchr(host, url->data + url->len, '/');
        if (end == NULL) {
            end = url->data + url->len;
        }

        p = ngx_slprintf(p, last, ", host \"%*s\"", end - host, host);
    }

    where->data = buf;
    where->len = p - buf;

    return where;
}


/*
 * The batches of workers that died are taken over by a live one: at once
 * by the worker that the master starts in a dead one's place, within a
 * second by any other.  Their records are queued again here, as records
 * of no waiting webhook (their webhooks' connections died with the
 * worker); a call that was out may be made twice, which is harmless.
 */

static void
ngx_http_dato_batch_adopt(ngx_event_t *ev)
{
    ngx_uint_t                i, n;
    ngx_queue_t              *found[NGX_HTTP_DATO_ADOPT_MAX];
    ngx_http_dato_batcher_t  *b;

    b = (ngx_http_dato_batcher_t *)
            ((u_char *) ev - offsetof(ngx_http_dato_batcher_t, adopt));

    if (b->aborted) {
        return;
    }

    n = ngx_http_dato_shm_journal_take(b->zone, ngx_http_dato_batch_orphan,
                                       found, NGX_HTTP_DATO_ADOPT_MAX);

    for (i = 0; i < n; i++) {
        ngx_http_dato_batch_inherit(b,
            ngx_queue_data(found[i], ngx_http_dato_batch_t, journal));
    }

    ngx_add_timer(&b->adopt, n == NGX_HTTP_DATO_ADOPT_MAX
                             ? 0 : NGX_HTTP_DATO_ADOPT_EVERY);
}


/* called with the zone locked */

static ngx_uint_t
ngx_http_dato_batch_orphan(ngx_queue_t *q)
{
    ngx_http_dato_batch_t  *batch;

    batch = ngx_queue_data(q, ngx_http_dato_batch_t, journal);

    return batch->owner != ngx_pid && kill(batch->owner, 0) == -1
           && ngx_errno == NGX_ESRCH;
}


static void
ngx_http_dato_batch_inherit(ngx_http_dato_batcher_t *b,
    ngx_http_dato_batch_t *orphan)
{
    ngx_uint_t                  i;
    ngx_http_dato_target_t     *target;
    ngx_http_dato_parse_str_t   ids[NGX_HTTP_DATO_BATCH_MAX];

    static ngx_str_t  orphaned = ngx_string(
        "dato: gave up publishing the records of a worker process that died "
        "(no location of this configuration uses its token and URL, or no "
        "memory)");

    target = ngx_http_dato_batch_target(b, orphan->key);

    /* the dead worker's count of queued records is the heir's now */

    ngx_http_dato_stat_add(b->zone, NGX_HTTP_DATO_RECORDS_QUEUED,
                           -(ngx_atomic_int_t) orphan->nids);

    orphan->nids = ngx_min(orphan->nids, NGX_HTTP_DATO_BATCH_MAX);

    for (i = 0; i < orphan->nids; i++) {
        ids[i].data = (char *) orphan->ids[i].data;
        ids[i].len = ngx_min(orphan->ids[i].len, NGX_HTTP_DATO_ID_MAX_LEN);
    }

    orphan->env.data = orphan->env_buf;
    orphan->env.len = ngx_min(orphan->env.len, NGX_HTTP_DATO_ENV_MAX_LEN);

    if (target
        && ngx_http_dato_batch_put(b, target, &orphan->env, ids, orphan->nids,
                                   NULL)
           == NGX_OK)
    {
        ngx_log_error(NGX_LOG_WARN, b->log, 0,
                      "dato: took over %ui record%s of worker process %P, "
                      "which died before DatoCMS accepted %s",
                      orphan->nids, ngx_http_dato_plural(orphan->nids),
                      orphan->owner, orphan->nids == 1 ? "it" : "them");

    } else {

        /* the orphan is this worker's now, if only to be logged */

        orphan->batcher = b;
        orphan->attempts = 0;

        ngx_http_dato_batch_log_ids(orphan, NGX_LOG_ERR, orphaned.data,
                                    orphaned.len);

        ngx_http_dato_stat_add(b->zone, NGX_HTTP_DATO_RECORDS_GIVEN_UP,
                               orphan->nids);
    }

    ngx_http_dato_shm_free(b->zone, orphan);
}


static ngx_http_dato_target_t *
ngx_http_dato_batch_target(ngx_http_dato_batcher_t *b, uint32_t key)
{
    ngx_uint_t               i;
    ngx_http_dato_target_t **targets;

    targets = b->targets->elts;

    for (i = 0; i < b->targets->nelts; i++) {
        if (targets[i]->key == key) {
            return targets[i];
        }
    }

    return NULL;
}


/*
 * The worker must stop before its records are sent (a fast stop,
 * worker_shutdown_timeout): with dato_spool_file, they go to the spool
 * instead of being given up, calls out included (DatoCMS may have taken
 * those; publishing again is harmless).
 */

static void
ngx_http_dato_batch_spool(ngx_http_dato_batcher_t *b)
{
    u_char                 *ids[NGX_HTTP_DATO_BATCH_MAX];
    size_t                  lens[NGX_HTTP_DATO_BATCH_MAX];
    ngx_uint_t              i, n;
    ngx_queue_t            *q;
    ngx_http_dato_spool_t  *sp;
    ngx_http_dato_batch_t  *batch;

    sp = NULL;
    n = 0;

    for (q = ngx_queue_head(&b->batches);
         q != ngx_queue_sentinel(&b->batches);
         q = ngx_queue_next(q))
    {
        batch = ngx_queue_data(q, ngx_http_dato_batch_t, all);

        if (!batch->queued || batch->nids == 0) {
            continue;
        }

        if (sp == NULL) {
            sp = ngx_http_dato_spool_open(&b->spool, b->log);
            if (sp == NULL) {
                return;
            }
        }

        for (i = 0; i < batch->nids; i++) {
            ids[i] = batch->ids[i].data;
            lens[i] = batch->ids[i].len;
        }

        if (ngx_http_dato_spool_add(sp, batch->key, &batch->env, ids, lens,
                                    batch->nids)
            != NGX_OK)
        {
            break;
        }

        batch->spooled = 1;
        n += batch->nids;
    }

    if (sp == NULL) {
        return;
    }

    if (ngx_http_dato_spool_close(sp) == NGX_OK) {
        ngx_log_error(NGX_LOG_WARN, b->log, 0,
                      "dato: %ui record%s spooled (%s)",
                      n, ngx_http_dato_plural(n), b->abort_reason);
        return;
    }

    /* not written: they are given up, named in the log, as without it */

    for (q = ngx_queue_head(&b->batches);
         q != ngx_queue_sentinel(&b->batches);
         q = ngx_queue_next(q))
    {
        batch = ngx_queue_data(q, ngx_http_dato_batch_t, all);
        batch->spooled = 0;
    }
}


/* a line of a spool file read back: records of no waiting webhook */

static ngx_int_t
ngx_http_dato_batch_unspool(void *data, uint32_t key, ngx_str_t *env,
    ngx_http_dato_parse_str_t *ids, ngx_uint_t n)
{
    ngx_http_dato_batcher_t *b = data;

    ngx_uint_t               i;
    ngx_http_dato_batch_t   *lost;
    ngx_http_dato_target_t  *target;

    static ngx_str_t  foreign = ngx_string(
        "dato: gave up publishing spooled records: no location of this "
        "configuration uses their token and URL");

    target = ngx_http_dato_batch_target(b, key);

    if (target
        && ngx_http_dato_batch_put(b, target, env, ids, n, NULL) == NGX_OK)
    {
        ngx_log_error(NGX_LOG_NOTICE, b->log, 0,
                      "dato: %ui spooled record%s queued again",
                      n, ngx_http_dato_plural(n));
        return NGX_OK;
    }

    /*
     * another configuration's records (another token or URL): they are
     * not sent with this one's, but named as given up
     */

    lost = ngx_alloc(sizeof(ngx_http_dato_batch_t)
                     + n * sizeof(ngx_http_dato_id_t), b->log);
    if (lost == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(lost, sizeof(ngx_http_dato_batch_t));
    lost->batcher = b;
    lost->nids = n;

    for (i = 0; i < n; i++) {
        ngx_memcpy(lost->ids[i].data, ids[i].data, ids[i].len);
        lost->ids[i].data[ids[i].len] = '\0';
        lost->ids[i].len = (u_char) ids[i].len;
    }

    ngx_http_dato_batch_log_ids(lost, NGX_LOG_ERR, foreign.data, foreign.len);

    ngx_http_dato_stat_add(b->zone, NGX_HTTP_DATO_RECORDS_GIVEN_UP, n);

    ngx_free(lost);

    return NGX_OK;
}


static void
ngx_http_dato_batch_watch(ngx_event_t *ev)
{
    ngx_connection_t         *c;
    ngx_http_dato_batcher_t  *b;

    c = ev->data;
    b = c->data;

    if (!c->close) {
        return;
    }

    c->close = 0;
    c->error = 0;

    if (!b->hurry) {

        /* the worker has begun a graceful exit: no batch waits its window */

        b->hurry = 1;
        ngx_http_dato_batch_hurry(b);
        return;
    }

    /* worker_shutdown_timeout has passed: nothing more can be sent */

    ngx_http_dato_batch_abort(b, "worker_shutdown_timeout has passed");
}


static void
ngx_http_dato_batch_hurry(ngx_http_dato_batcher_t *b)
{
    ngx_queue_t            *q, *next;
    ngx_http_dato_batch_t  *batch;

    for (q = ngx_queue_head(&b->batches);
         q != ngx_queue_sentinel(&b->batches);
         q = next)
    {
        next = ngx_queue_next(q);
        batch = ngx_queue_data(q, ngx_http_dato_batch_t, all);

        if (batch->state == NGX_HTTP_DATO_BATCH_OPEN) {
            ngx_http_dato_batch_send(batch);
        }
    }
}


static void
ngx_http_dato_batch_abort(ngx_http_dato_batcher_t *b, const char *why)
{
    ngx_queue_t            *q;
    ngx_http_dato_batch_t  *batch;

    b->aborted = 1;
    b->abort_reason = why;

    if (b->spool.len) {
        ngx_http_dato_batch_spool(b);
    }

    /* calls out now come back through their answer handlers */

    ngx_http_dato_curl_abort(b->bridge);

    while (!ngx_queue_empty(&b->batches)) {
        q = ngx_queue_head(&b->batches);
        batch = ngx_queue_data(q, ngx_http_dato_batch_t, all);

        if (batch->state == NGX_HTTP_DATO_BATCH_JOB) {

            /* published already: only its result will not be known */

            ngx_http_dato_batch_job_end(batch, NGX_LOG_INFO,
                                        "was not followed to its end: the "
                                        "worker process is exiting");
            continue;
        }

        ngx_http_dato_batch_give_up(batch, 0, NULL, NULL, why);
    }
}
