
/*
 * Copyright (C) ngx_http_dato_module authors
 *
 * The journal room: that no record answered 2xx is lost with its worker.
 * A batch with such records (queued) is in the shared zone's journal; a
 * live worker adopts the batches of one that died and queues their
 * records again.  A worker that must stop before it has sent its records
 * writes them to the spool file (dato_spool_file), and one worker of the
 * next start reads them back and queues them again; the file's format is
 * ngx_http_dato_spool.c's.
 *
 * Its state lives in the shared zone (the journal: a dead worker's heap
 * is gone, the zone is not) and in the spool file (a stop ends the zone's
 * life too); the adopt timer is the worker's.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_http_dato_batch_int.h"
#include "ngx_http_dato_journal.h"
#include "ngx_http_dato_spool.h"


/* how often a worker looks for the batches of workers that died */
#define NGX_HTTP_DATO_ADOPT_EVERY   1000
#define NGX_HTTP_DATO_ADOPT_MAX     16


static void ngx_http_dato_journal_adopt(ngx_event_t *ev);
static ngx_uint_t ngx_http_dato_journal_orphan(ngx_queue_t *q);
static void ngx_http_dato_journal_inherit(ngx_http_dato_batcher_t *b,
    ngx_http_dato_batch_t *orphan);
static ngx_http_dato_target_t *ngx_http_dato_journal_target(
    ngx_http_dato_batcher_t *b, uint32_t key);
static ngx_int_t ngx_http_dato_journal_unspool(void *data, uint32_t key,
    ngx_str_t *env, ngx_http_dato_parse_str_t *ids, ngx_uint_t n);


void
ngx_http_dato_journal_init(ngx_http_dato_batcher_t *b)
{
    /* the first look at once: a worker respawned after a crash inherits */

    b->adopt.handler = ngx_http_dato_journal_adopt;
    b->adopt.data = &b->dummy;
    b->adopt.log = b->log;
    b->adopt.cancelable = 1;

    ngx_http_dato_journal_adopt(&b->adopt);

    /*
     * one worker reads back what the last stop spooled: at start, before
     * any request, so the disk reads cost no webhook anything
     */

    if (b->spool.len && ngx_worker == 0) {
        ngx_http_dato_spool_read(&b->spool, b->log,
                                 ngx_http_dato_journal_unspool, b);
    }
}


void
ngx_http_dato_journal_done(ngx_http_dato_batcher_t *b)
{
    if (b->adopt.timer_set) {
        ngx_del_timer(&b->adopt);
    }
}


void
ngx_http_dato_journal_set(ngx_http_dato_batch_t *batch, ngx_uint_t on)
{
    if (batch->journaled != on) {
        batch->journaled = on;
        ngx_http_dato_shm_journal(batch->batcher->zone, &batch->journal, on);
    }
}


/*
 * The batches of workers that died are taken over by a live one: at once
 * by the worker that the master starts in a dead one's place, within a
 * second by any other.  Their records are queued again here, as records
 * of no waiting webhook (their webhooks' connections died with the
 * worker); a call that was out may be made twice, which is harmless.
 */

static void
ngx_http_dato_journal_adopt(ngx_event_t *ev)
{
    ngx_uint_t                i, n;
    ngx_queue_t              *found[NGX_HTTP_DATO_ADOPT_MAX];
    ngx_http_dato_batcher_t  *b;

    b = (ngx_http_dato_batcher_t *)
            ((u_char *) ev - offsetof(ngx_http_dato_batcher_t, adopt));

    if (b->aborted) {
        return;
    }

    n = ngx_http_dato_shm_journal_take(b->zone, ngx_http_dato_journal_orphan,
                                       found, NGX_HTTP_DATO_ADOPT_MAX);

    for (i = 0; i < n; i++) {
        ngx_http_dato_journal_inherit(b,
            ngx_queue_data(found[i], ngx_http_dato_batch_t, journal));
    }

    ngx_add_timer(&b->adopt, n == NGX_HTTP_DATO_ADOPT_MAX
                             ? 0 : NGX_HTTP_DATO_ADOPT_EVERY);
}


/* called with the zone locked */

static ngx_uint_t
ngx_http_dato_journal_orphan(ngx_queue_t *q)
{
    ngx_http_dato_batch_t  *batch;

    batch = ngx_queue_data(q, ngx_http_dato_batch_t, journal);

    return batch->owner != ngx_pid && kill(batch->owner, 0) == -1
           && ngx_errno == NGX_ESRCH;
}


static void
ngx_http_dato_journal_inherit(ngx_http_dato_batcher_t *b,
    ngx_http_dato_batch_t *orphan)
{
    ngx_uint_t                  i;
    ngx_http_dato_target_t     *target;
    ngx_http_dato_parse_str_t   ids[NGX_HTTP_DATO_BATCH_MAX];

    static ngx_str_t  orphaned = ngx_string(
        "dato: gave up publishing the records of a worker process that died "
        "(no location of this configuration uses its token and URL, or no "
        "memory)");

    target = ngx_http_dato_journal_target(b, orphan->key);

    /* the dead worker's count of queued records is the heir's now */

    ngx_http_dato_stat_records(b->zone,
                               target ? target->action
                                      : NGX_HTTP_DATO_ACTIONS,
                               NGX_HTTP_DATO_RECORDS_QUEUED,
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

        ngx_http_dato_stat_records(b->zone, NGX_HTTP_DATO_ACTIONS,
                               NGX_HTTP_DATO_RECORDS_GIVEN_UP, orphan->nids);
    }

    ngx_http_dato_shm_free(b->zone, orphan);
}


static ngx_http_dato_target_t *
ngx_http_dato_journal_target(ngx_http_dato_batcher_t *b, uint32_t key)
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

void
ngx_http_dato_journal_spool(ngx_http_dato_batcher_t *b)
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
ngx_http_dato_journal_unspool(void *data, uint32_t key, ngx_str_t *env,
    ngx_http_dato_parse_str_t *ids, ngx_uint_t n)
{
    ngx_http_dato_batcher_t *b = data;

    ngx_uint_t               i;
    ngx_http_dato_batch_t   *lost;
    ngx_http_dato_target_t  *target;

    static ngx_str_t  foreign = ngx_string(
        "dato: gave up publishing spooled records: no location of this "
        "configuration uses their token and URL");

    target = ngx_http_dato_journal_target(b, key);

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

    ngx_http_dato_stat_records(b->zone, NGX_HTTP_DATO_ACTIONS,
                               NGX_HTTP_DATO_RECORDS_GIVEN_UP, n);

    ngx_free(lost);

    return NGX_OK;
}
