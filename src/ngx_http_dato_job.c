
/*
 * Copyright (C) ngx_http_dato_module authors
 *
 * The job room: following the jobs DatoCMS accepted.  A batch whose call
 * DatoCMS took becomes a followed job: polled, less and less often, for
 * its result, until it finishes, dato_job_timeout passes or the worker
 * exits.  A job that failed some records is sent again or split, as a
 * refused call would be (ngx_http_dato_batch.c).  A worker follows at
 * most NGX_HTTP_DATO_JOBS_MAX jobs; when the zone is full, the oldest
 * one gives up its room to new records.
 *
 * Its state: a followed job is its batch, which stays where it was, in
 * the shared zone, but out of the journal (DatoCMS has its records:
 * nothing is left to adopt); the count of followed jobs and the poll
 * timers are the worker's, since following a job is one worker's
 * business: the job of a worker that dies is not followed further.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_http_dato_batch_int.h"
#include "ngx_http_dato_job.h"


/* job results: first asked for after 1 s, then less and less often */
#define NGX_HTTP_DATO_POLL_MIN      1000
#define NGX_HTTP_DATO_POLL_MAX      30000

/* the most jobs a worker follows at once; past it jobs are not followed */
#define NGX_HTTP_DATO_JOBS_MAX      1000


static void ngx_http_dato_job_polled(void *data,
    ngx_http_dato_client_result_t *res);
static ngx_uint_t ngx_http_dato_job_awaited(ngx_http_dato_batch_t *batch);
static void ngx_http_dato_job_again(ngx_http_dato_batch_t *batch);
static void ngx_http_dato_job_failed(ngx_http_dato_batch_t *batch,
    ngx_http_dato_client_result_t *res);
static void ngx_http_dato_job_stats(ngx_http_dato_batch_t *batch,
    ngx_uint_t bad);


/* DatoCMS took the batch: its webhooks learn the job; then follow it */

void
ngx_http_dato_job_accepted(ngx_http_dato_batch_t *batch,
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

    ngx_http_dato_stat_records(b->zone, batch->target->action,
                               NGX_HTTP_DATO_RECORDS_SENT, batch->nids);
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


void
ngx_http_dato_job_poll(ngx_http_dato_batch_t *batch)
{
    ngx_int_t                 rc;
    ngx_msec_t                wait;
    ngx_uint_t                spare;
    ngx_http_dato_batcher_t  *b;

    b = batch->batcher;

    if (ngx_current_msec - batch->accepted >= batch->target->job_timeout) {
        ngx_http_dato_job_end(batch, NGX_LOG_ERR,
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
                                  ngx_http_dato_job_polled, batch, b->log);

    if (rc != NGX_OK) {
        ngx_http_dato_sched_release(&batch->target->rate, batch->ticket);
        ngx_add_timer(&batch->timer, batch->poll_delay);
        return;
    }

    batch->polling = 1;
}


static void
ngx_http_dato_job_polled(void *data, ngx_http_dato_client_result_t *res)
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
        ngx_http_dato_job_end(batch, NGX_LOG_INFO,
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
            ngx_http_dato_job_failed(batch, res);
            return;
        }

        ngx_http_dato_job_end(batch, NGX_LOG_INFO, "finished");
        return;
    }

    /*
     * 404: the job still runs; anything else is asked again later too (a
     * 429 has paused the token's calls).  A webhook that waits for the
     * result is worth a poll a second, as the official clients poll;
     * otherwise polls come less and less often.
     */

    if (!ngx_http_dato_job_awaited(batch)) {
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

void
ngx_http_dato_job_end(ngx_http_dato_batch_t *batch, ngx_uint_t level,
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

        ngx_http_dato_job_stats(batch, bad);

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


/* some webhook waits for the job's result, not only for its ID */

static ngx_uint_t
ngx_http_dato_job_awaited(ngx_http_dato_batch_t *batch)
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
 * A job failed in a way that may pass (a 5xx, a transient error): its
 * batch goes back in the queue to be sent again, whole, within
 * dato_retry_timeout.
 */

static void
ngx_http_dato_job_again(ngx_http_dato_batch_t *batch)
{
    ngx_queue_t           *q;
    ngx_http_dato_job_t   *job;
    ngx_http_dato_link_t  *link;

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

    ngx_http_dato_job_unfollow(batch);

    batch->state = NGX_HTTP_DATO_BATCH_WAITING;
    batch->timer.cancelable = 0;
    batch->finished = 0;
    batch->job.len = 0;

    ngx_http_dato_batch_requeue(batch);
}


/*
 * A job whose status is not 2xx, or that failed some records, is handled
 * as the same refusal of the call would be: sent again when the error may
 * pass, split down to the records that still fail otherwise (publishing a
 * published record again is harmless).
 */

static void
ngx_http_dato_job_failed(ngx_http_dato_batch_t *batch,
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

    ngx_http_dato_job_stats(batch, 1);

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

    ngx_http_dato_job_again(batch);

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
ngx_http_dato_job_stats(ngx_http_dato_batch_t *batch, ngx_uint_t bad)
{
    ngx_http_dato_batcher_t  *b;

    b = batch->batcher;

    ngx_http_dato_stat_add(b->zone, bad ? NGX_HTTP_DATO_JOBS_FAILED
                                        : NGX_HTTP_DATO_JOBS_DONE, 1);
    ngx_http_dato_stat_records(b->zone, batch->target->action,
                               NGX_HTTP_DATO_RECORDS_PUBLISHED,
                               batch->successful);
    ngx_http_dato_stat_records(b->zone, batch->target->action,
                               NGX_HTTP_DATO_RECORDS_FAILED, batch->failed);
    ngx_http_dato_stat_latency(b->zone, NGX_HTTP_DATO_LATENCY_JOB_DONE,
                               ngx_current_msec - batch->opened);
    ngx_http_dato_stat_job(b->zone, &batch->job, batch->nids,
                           batch->job_status, batch->successful,
                           batch->failed);
}


/* stops following this worker's oldest job that no poll is out for */

ngx_int_t
ngx_http_dato_job_evict(ngx_http_dato_batcher_t *b)
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
            ngx_http_dato_job_end(batch, NGX_LOG_INFO,
                                  "was not followed to its end: its "
                                  "room in the shared zone went to "
                                  "new records");
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


/* the worker follows the batch's job no more */

void
ngx_http_dato_job_unfollow(ngx_http_dato_batch_t *batch)
{
    ngx_http_dato_batcher_t  *b;

    if (batch->state != NGX_HTTP_DATO_BATCH_JOB) {
        return;
    }

    b = batch->batcher;

    b->jobs--;
    ngx_http_dato_stat_add(b->zone, NGX_HTTP_DATO_JOBS_PENDING, -1);
}
