
/*
 * Copyright (C) ngx_http_dato_module authors
 *
 * The batching room: records into batches, batches into calls.  A
 * webhook's records go into the open batch of their target and
 * environment; a batch is sent when full, when its window ends or when
 * the worker exits, when the scheduler allows it; its answer is handed to
 * the webhooks that wait on it (their waiters and links).  A call that
 * failed in a way that may pass is made again after a backoff, within
 * dato_retry_timeout; a batch DatoCMS refused is split down to the
 * refused records; what is given up is named in the log, ID by ID.
 *
 * Its state lives in three places: the batches in the shared zone (their
 * records must outlive a worker that dies, ngx_http_dato_journal.c), the
 * waiters and links in the webhook's request pool (they end with the
 * webhook, which may go before its batches), and the batcher, its lines
 * and its timers in the worker (they are its event loop).  The other
 * rooms: ngx_http_dato_job.c follows the jobs of accepted calls,
 * ngx_http_dato_exit.c ends the batches at the worker's exit.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_http_dato_batch_int.h"
#include "ngx_http_dato_exit.h"
#include "ngx_http_dato_job.h"
#include "ngx_http_dato_journal.h"


/* capped exponential backoff between attempts of one batch */
#define NGX_HTTP_DATO_BACKOFF_MIN   500
#define NGX_HTTP_DATO_BACKOFF_MAX   30000

/* how many IDs one error.log line names; lines stay under 2048 bytes */
#define NGX_HTTP_DATO_IDS_PER_LINE  60


static ngx_http_dato_batch_t *ngx_http_dato_batch_open(
    ngx_http_dato_batcher_t *b, ngx_http_dato_target_t *target,
    ngx_str_t *env);
static ngx_msec_t ngx_http_dato_batch_wait(ngx_http_dato_batch_t *batch,
    ngx_msec_t left);
static void ngx_http_dato_batch_hold(ngx_http_dato_batch_t *batch,
    ngx_msec_t wait);
static void ngx_http_dato_batch_call(ngx_http_dato_batch_t *batch);
static void ngx_http_dato_batch_timer(ngx_event_t *ev);
static void ngx_http_dato_batch_answer(void *data,
    ngx_http_dato_client_result_t *res);
static void ngx_http_dato_batch_sent(ngx_http_dato_batch_t *batch,
    ngx_http_dato_client_result_t *res);
static void ngx_http_dato_batch_retry(ngx_http_dato_batch_t *batch,
    ngx_http_dato_client_result_t *res, ngx_msec_t pause);
static void ngx_http_dato_batch_leave_line(ngx_http_dato_batch_t *batch);
static ngx_http_dato_link_t *ngx_http_dato_batch_link(
    ngx_http_dato_waiter_t *w, ngx_http_dato_batch_t *batch);
static ngx_http_dato_batch_t *ngx_http_dato_batch_alloc(
    ngx_http_dato_batcher_t *b, ngx_http_dato_target_t *target,
    ngx_str_t *env, ngx_uint_t size, ngx_uint_t evict);
static void ngx_http_dato_batch_keep_code(ngx_http_dato_batch_t *batch,
    ngx_str_t *code);
static ngx_uint_t ngx_http_dato_batch_any(ngx_uint_t status,
    ngx_str_t *code);
static ngx_int_t ngx_http_dato_batch_split(ngx_http_dato_batch_t *batch);
static ngx_int_t ngx_http_dato_batch_relink(ngx_http_dato_batch_t *from,
    ngx_http_dato_batch_t *to, ngx_uint_t first);
static void ngx_http_dato_batch_tell_refused(ngx_http_dato_batch_t *batch);


ngx_http_dato_batcher_t *
ngx_http_dato_batcher_create(ngx_log_t *log, ngx_uint_t queue_size,
    ngx_shm_zone_t *zone, ngx_array_t *targets, ngx_str_t *spool)
{
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

    if (ngx_http_dato_exit_init(b) != NGX_OK) {
        ngx_http_dato_curl_destroy(b->bridge);
        ngx_free(b);
        return NULL;
    }

    ngx_http_dato_journal_init(b);

    return b;
}


void
ngx_http_dato_batcher_destroy(ngx_http_dato_batcher_t *b)
{
    b->exiting = 1;

    ngx_http_dato_exit_abort(b, "the worker process is exiting");

    ngx_http_dato_journal_done(b);
    ngx_http_dato_exit_done(b);

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


ngx_int_t
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
            ngx_http_dato_stat_records(b->zone, batch->target->action,
                               NGX_HTTP_DATO_RECORDS_QUEUED, 1);
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

        if (batch || !evict || ngx_http_dato_job_evict(b) != NGX_OK) {
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

    ngx_http_dato_journal_set(batch, 1);

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

void
ngx_http_dato_batch_send(ngx_http_dato_batch_t *batch)
{
    ngx_msec_t  wait, left;

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

    wait = ngx_http_dato_batch_wait(batch, left);

    if (wait) {
        ngx_http_dato_batch_hold(batch, wait);
        return;
    }

    ngx_http_dato_batch_call(batch);
}


/* how long the batch waits for its call, at most "left": 0 to call now */

static ngx_msec_t
ngx_http_dato_batch_wait(ngx_http_dato_batch_t *batch, ngx_msec_t left)
{
    ngx_msec_t    wait;
    ngx_queue_t  *line;

    line = &batch->target->line;

    if (batch->in_line ? ngx_queue_head(line) != &batch->line
                       : !ngx_queue_empty(line))
    {
        /* others are before it: it only wakes for its deadline */
        return left;
    }

    wait = ngx_http_dato_sched_ask(&batch->target->rate, &batch->ticket, 0);

    if (wait) {

        /* a little spread, so that waiting workers do not wake together */

        wait = ngx_min(wait + (ngx_msec_t) ngx_random() % 20, left);
    }

    return wait;
}


/*
 * The budget, its pace or a 429 pause holds the call: a batch that is not
 * full keeps taking records meanwhile, so that a busy module makes full
 * batches at the rate the budget allows, and an idle one sends a
 * webhook's records at once.
 */

static void
ngx_http_dato_batch_hold(ngx_http_dato_batch_t *batch, ngx_msec_t wait)
{
    if (batch->state == NGX_HTTP_DATO_BATCH_OPEN
        && batch->nids == batch->target->batch_size)
    {
        ngx_queue_remove(&batch->queue);
        batch->state = NGX_HTTP_DATO_BATCH_WAITING;
    }

    if (!batch->in_line) {
        ngx_queue_insert_tail(&batch->target->line, &batch->line);
        batch->in_line = 1;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, batch->batcher->log, 0,
                   "dato: %ui records wait %M ms for the budget",
                   batch->nids, wait);

    ngx_add_timer(&batch->timer, wait);
}


/* the scheduler gave the batch its call: out it goes */

static void
ngx_http_dato_batch_call(ngx_http_dato_batch_t *batch)
{
    ngx_int_t                 rc;
    ngx_http_dato_batcher_t  *b;

    b = batch->batcher;

    ngx_http_dato_batch_leave_line(batch);

    if (batch->state == NGX_HTTP_DATO_BATCH_OPEN) {
        ngx_queue_remove(&batch->queue);
    }

    batch->state = NGX_HTTP_DATO_BATCH_INFLIGHT;
    batch->attempts++;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, b->log, 0,
                   "dato: sending %ui records, env \"%V\", attempt %ui",
                   batch->nids, &batch->env, batch->attempts);

    rc = ngx_http_dato_client_bulk(b->bridge, &batch->target->client,
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
        ngx_http_dato_job_poll(batch);
        return;

    default:
        ngx_http_dato_batch_send(batch);
    }
}


static void
ngx_http_dato_batch_answer(void *data, ngx_http_dato_client_result_t *res)
{
    ngx_http_dato_batch_t *batch = data;

    ngx_msec_t                pause;
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

    ngx_http_dato_stat_call(b->zone,
                            ngx_http_dato_stat_calls(batch->target->action),
                            res->status, &res->code);

    if (res->status >= 200 && res->status < 300) {
        ngx_http_dato_batch_sent(batch, res);
        return;
    }

    if (res->status == 429 || res->status >= 500 || res->transient) {
        ngx_http_dato_batch_retry(batch, res, pause);
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


/* DatoCMS took the batch: the job room takes it from here */

static void
ngx_http_dato_batch_sent(ngx_http_dato_batch_t *batch,
    ngx_http_dato_client_result_t *res)
{
    u_char                    buf[NGX_HTTP_DATO_WHERE_LEN];
    ngx_str_t                 where;
    ngx_http_dato_batcher_t  *b;

    b = batch->batcher;

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

    ngx_http_dato_job_accepted(batch, res);
}


/*
 * A call that failed in a way that may pass (429, 5xx, a network error):
 * made again after "pause" (a 429) or a backoff, if that is within
 * dato_retry_timeout, or given up.
 */

static void
ngx_http_dato_batch_retry(ngx_http_dato_batch_t *batch,
    ngx_http_dato_client_result_t *res, ngx_msec_t pause)
{
    u_char                    buf[NGX_HTTP_DATO_WHERE_LEN];
    ngx_str_t                 where;
    ngx_msec_t                delay;
    ngx_http_dato_batcher_t  *b;

    b = batch->batcher;

    /* an API that fails: the first failure is an error, not each */

    if ((res->status == 0 || res->status >= 500) && !b->failing) {
        b->failing = 1;
        ngx_log_error(NGX_LOG_ERR, b->log, 0,
                      "dato: the API fails (%ui %V%V): calls are "
                      "retried until dato_retry_timeout, and this is "
                      "logged once until it accepts one again",
                      res->status, &res->code,
                      ngx_http_dato_batch_where(batch, res->status == 0,
                                                buf, sizeof(buf), &where));
    }

    /* a 429 pauses every worker's calls with this token: wait it out */

    delay = res->status == 429 ? pause : ngx_http_dato_batch_backoff(batch);

    if (ngx_current_msec - batch->opened + delay
        > batch->target->retry_timeout)
    {
        ngx_http_dato_batch_give_up(batch, res->status, &res->code,
                                    &res->details,
                                    "dato_retry_timeout has passed");
        return;
    }

    ngx_log_error(NGX_LOG_WARN, b->log, 0,
                  "dato: bulk %V of %ui record%s failed "
                  "(%ui %V%V), retrying in %M ms",
                  &ngx_http_dato_actions[batch->target->action].name,
                  batch->nids, ngx_http_dato_plural(batch->nids),
                  res->status, &res->code,
                  ngx_http_dato_batch_where(batch, res->status == 0,
                                            buf, sizeof(buf), &where),
                  delay);

    ngx_http_dato_stat_add(b->zone, NGX_HTTP_DATO_RETRIES, 1);

    batch->last_status = res->status;
    ngx_http_dato_batch_keep_code(batch, &res->code);

    batch->state = NGX_HTTP_DATO_BATCH_WAITING;
    ngx_add_timer(&batch->timer, delay);
}


ngx_msec_t
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


/*
 * The webhooks that wait on the batch learn its job, its result or its
 * failure.  Those that wait for the job's result stay linked until the
 * final notice.
 */

void
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


void
ngx_http_dato_batch_unqueue(ngx_http_dato_batch_t *batch)
{
    ngx_http_dato_batcher_t  *b;

    if (!batch->queued) {
        return;
    }

    b = batch->batcher;

    batch->queued = 0;
    b->queued -= batch->nids;

    ngx_http_dato_stat_records(b->zone, batch->target->action,
                               NGX_HTTP_DATO_RECORDS_QUEUED,
                               -(ngx_atomic_int_t) batch->nids);

    ngx_http_dato_journal_set(batch, 0);
}


/* the batch holds queued records again, not yet accepted */

void
ngx_http_dato_batch_requeue(ngx_http_dato_batch_t *batch)
{
    ngx_http_dato_batcher_t  *b;

    b = batch->batcher;

    batch->queued = 1;
    b->queued += batch->nids;
    ngx_http_dato_stat_records(b->zone, batch->target->action,
                               NGX_HTTP_DATO_RECORDS_QUEUED, batch->nids);

    ngx_http_dato_journal_set(batch, 1);
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


void
ngx_http_dato_batch_free(ngx_http_dato_batch_t *batch)
{
    ngx_http_dato_batcher_t  *b;

    b = batch->batcher;

    ngx_http_dato_batch_leave_line(batch);

    if (batch->state == NGX_HTTP_DATO_BATCH_OPEN) {
        ngx_queue_remove(&batch->queue);
    }

    ngx_http_dato_job_unfollow(batch);

    if (batch->timer.timer_set) {
        ngx_del_timer(&batch->timer);
    }

    ngx_http_dato_batch_unqueue(batch);
    ngx_http_dato_journal_set(batch, 0);
    ngx_queue_remove(&batch->all);

    ngx_http_dato_shm_free(b->zone, batch);
}


/*
 * The promise: a record answered 2xx ends published or is named here,
 * at error level, with the reason.
 */

void
ngx_http_dato_batch_give_up(ngx_http_dato_batch_t *batch, ngx_uint_t status,
    ngx_str_t *code, ngx_str_t *details, const char *why)
{
    u_char                   *p, *last, line[640];
    u_char                    buf[NGX_HTTP_DATO_WHERE_LEN];
    ngx_str_t                 none = ngx_string("-");
    ngx_str_t                 where;
    ngx_http_dato_action_t   *a;
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
        ngx_http_dato_batch_keep_code(batch, code);
    }

    last = line + sizeof(line);

    a = &ngx_http_dato_actions[batch->target->action];

    p = ngx_slprintf(line, last, "dato: gave up %s %ui record%s", a->verb,
                     batch->nids, ngx_http_dato_plural(batch->nids));

    if (batch->target->client.stage.len) {
        p = ngx_slprintf(p, last, " to stage \"%V\"",
                         &batch->target->client.stage);
    }

    p = ngx_slprintf(p, last, " after %ui attempt%s (%s; status %ui, code %V",
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

    ngx_http_dato_stat_records(b->zone, batch->target->action,
                               NGX_HTTP_DATO_RECORDS_GIVEN_UP, batch->nids);

    ngx_http_dato_batch_tell_refused(batch);
    ngx_http_dato_batch_notify(batch, 1);
    ngx_http_dato_batch_free(batch);
}


/* the batch's failure code, in the batch: the answer's goes with it */

static void
ngx_http_dato_batch_keep_code(ngx_http_dato_batch_t *batch, ngx_str_t *code)
{
    batch->fail_code.len = ngx_min(code->len, NGX_HTTP_DATO_CODE_LEN);
    batch->fail_code.data = batch->code_buf;

    if (batch->fail_code.len) {
        ngx_memcpy(batch->code_buf, code->data, batch->fail_code.len);
    }
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

void
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
        ngx_http_dato_stat_records(b->zone, batch->target->action,
                               NGX_HTTP_DATO_RECORDS_QUEUED, batch->nids);
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


void
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

ngx_str_t *
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

    /* a publish goes unnamed, as it went before there were others */

    if (batch->target && batch->target->action != NGX_HTTP_DATO_PUBLISH) {
        p = ngx_slprintf(p, last, ", action \"%V\"",
                         &ngx_http_dato_actions[batch->target->action].name);

        if (batch->target->client.stage.len) {
            p = ngx_slprintf(p, last, ", stage \"%V\"",
                             &batch->target->client.stage);
        }
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
