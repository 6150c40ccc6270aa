
/*
 * Copyright (C) ngx_http_dato_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_dato_shm.h"


struct ngx_http_dato_shctx_s {
    /* a reload may bring a module build whose zone layout differs */
    size_t                        size;

    /* the scheduler's entries, see ngx_http_dato_sched_init_zone() */
    void                         *sched;

    /* the replay guard's IDs, see ngx_http_dato_seen.c */
    void                         *seen;

    /*
     * the journal: every worker's batches that hold records answered 2xx
     * and not yet accepted by DatoCMS, so that a dead worker's are found
     */
    ngx_queue_t                   journal;

    ngx_atomic_t                  stats[NGX_HTTP_DATO_STATS];
    ngx_http_dato_histogram_t     latency[2];

    /* a ring of the last jobs, "next" the oldest */
    ngx_http_dato_last_job_t      jobs[NGX_HTTP_DATO_LAST_JOBS];
    ngx_uint_t                    next_job;

    ngx_uint_t                    error_status;
    u_char                        error_code[64];
    size_t                        error_code_len;
    time_t                        error_time;
};


static ngx_int_t ngx_http_dato_shm_init(ngx_shm_zone_t *zone, void *data);
static ngx_int_t ngx_http_dato_shm_tokens(ngx_shm_zone_t *zone);


static ngx_str_t  ngx_http_dato_shm_name = ngx_string("ngx_http_dato");


/* upper bounds of the latency histogram buckets, in ms */
ngx_msec_t  ngx_http_dato_latency_bounds[NGX_HTTP_DATO_LATENCY_BUCKETS] = {
    100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000
};


/* a zone made by a build whose layout differs is not taken over */
#define ngx_http_dato_shm_layout()                                            \
    (sizeof(ngx_http_dato_shctx_t) << 16 ^ ngx_http_dato_sched_size())


ngx_shm_zone_t *
ngx_http_dato_shm_add(ngx_conf_t *cf, size_t size)
{
    ngx_shm_zone_t           *zone;
    ngx_http_dato_shm_ctx_t  *ctx;

    extern ngx_module_t  ngx_http_dato_module;

    zone = ngx_shared_memory_add(cf, &ngx_http_dato_shm_name, size,
                                 &ngx_http_dato_module);
    if (zone == NULL) {
        return NULL;
    }

    if (zone->data) {
        return zone;
    }

    ctx = ngx_pcalloc(cf->pool, sizeof(ngx_http_dato_shm_ctx_t));
    if (ctx == NULL) {
        return NULL;
    }

    if (ngx_array_init(&ctx->keys, cf->pool, 4,
                       sizeof(ngx_http_dato_sched_key_t))
        != NGX_OK)
    {
        return NULL;
    }

    zone->init = ngx_http_dato_shm_init;
    zone->data = ctx;

    return zone;
}


/* a token's hash: its index among the configuration's tokens */

ngx_int_t
ngx_http_dato_shm_key(ngx_shm_zone_t *zone, uint32_t key, ngx_uint_t cap,
    ngx_uint_t *index)
{
    ngx_uint_t                  i;
    ngx_http_dato_shm_ctx_t    *ctx;
    ngx_http_dato_sched_key_t  *keys;

    ctx = zone->data;
    keys = ctx->keys.elts;

    for (i = 0; i < ctx->keys.nelts; i++) {
        if (keys[i].key == key) {
            if (cap && (keys[i].cap == 0 || cap < keys[i].cap)) {
                keys[i].cap = cap;
            }

            *index = i;
            return NGX_OK;
        }
    }

    keys = ngx_array_push(&ctx->keys);
    if (keys == NULL) {
        return NGX_ERROR;
    }

    keys->key = key;
    keys->cap = cap;
    *index = i;

    return NGX_OK;
}


/*
 * Once all tokens are known: room for their entries, and a zone big
 * enough for them.  The count is a bound from above of what the slab
 * allocator takes (whole pages for an entry, a page of page headers per
 * 170 pages), so that "nginx -t" says what starting would find.
 */

char *
ngx_http_dato_shm_check(ngx_conf_t *cf, ngx_shm_zone_t *zone)
{
    size_t                    need, entry;
    ngx_uint_t                n;
    ngx_http_dato_shm_ctx_t  *ctx;

    ctx = zone->data;
    n = ctx->keys.nelts;

    ctx->entries = ngx_pcalloc(cf->pool,
                               (n + 1) * sizeof(ngx_http_dato_sched_t *));
    if (ctx->entries == NULL) {
        return NGX_CONF_ERROR;
    }

    entry = ngx_align(ngx_http_dato_sched_size(), ngx_pagesize);
    need = (n + 6) * ngx_pagesize + n * entry;
    need += need / 170;

    if (need > zone->shm.size) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"dato_zone_size\" %uzk is too small for %ui API "
                           "tokens: they need about %uzk",
                           zone->shm.size / 1024, n, need / 1024 + 1);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* a reload keeps the old zone, its budgets, pauses and counters */

static ngx_int_t
ngx_http_dato_shm_init(ngx_shm_zone_t *zone, void *data)
{
    ngx_http_dato_shm_ctx_t  *octx = data;

    size_t                    len;
    ngx_http_dato_shm_ctx_t  *ctx;

    ctx = zone->data;

    if (octx && octx->sh->size == ngx_http_dato_shm_layout()) {
        ctx->sh = octx->sh;
        ctx->shpool = octx->shpool;
        return ngx_http_dato_shm_tokens(zone);
    }

    ctx->shpool = (ngx_slab_pool_t *) zone->shm.addr;

    if (zone->shm.exists && octx == NULL) {
        ctx->sh = ctx->shpool->data;
        return ngx_http_dato_shm_tokens(zone);
    }

    ctx->sh = ngx_slab_calloc(ctx->shpool, sizeof(ngx_http_dato_shctx_t));
    if (ctx->sh == NULL) {
        return NGX_ERROR;
    }

    ctx->sh->size = ngx_http_dato_shm_layout();
    ctx->shpool->data = ctx->sh;
    ngx_queue_init(&ctx->sh->journal);

    if (octx) {

        /* the old layout is left where it is, until a restart */
        return ngx_http_dato_shm_tokens(zone);
    }

    len = sizeof(" in dato zone \"\"") + zone->shm.name.len;

    ctx->shpool->log_ctx = ngx_slab_alloc(ctx->shpool, len);
    if (ctx->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(ctx->shpool->log_ctx, " in dato zone \"%V\"%Z",
                &zone->shm.name);

    return ngx_http_dato_shm_tokens(zone);
}


/* old workers may use the zone while a reload sets it up: locked */

static ngx_int_t
ngx_http_dato_shm_tokens(ngx_shm_zone_t *zone)
{
    ngx_int_t                 rc;
    ngx_http_dato_shm_ctx_t  *ctx;

    ctx = zone->data;

    /* a full zone is handled where it is met (a followed job makes room) */
    ctx->shpool->log_nomem = 0;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    rc = ngx_http_dato_sched_init_zone(ctx->shpool, &ctx->sh->sched,
                                       ctx->keys.elts, ctx->keys.nelts,
                                       ctx->entries);

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    if (rc != NGX_OK) {
        ngx_log_error(NGX_LOG_EMERG, ngx_cycle->log, 0,
                      "\"dato_zone_size\" %uzk is too small for %ui API "
                      "tokens", zone->shm.size / 1024, ctx->keys.nelts);
    }

    return rc;
}


/* where the replay guard keeps its root; it locks the zone itself */

void **
ngx_http_dato_shm_seen(ngx_shm_zone_t *zone, ngx_slab_pool_t **shpool)
{
    ngx_http_dato_shm_ctx_t  *ctx;

    ctx = zone->data;
    *shpool = ctx->shpool;

    return &ctx->sh->seen;
}


/* memory that outlives a worker: its batches */

void *
ngx_http_dato_shm_alloc(ngx_shm_zone_t *zone, size_t size)
{
    void                     *p;
    ngx_http_dato_shm_ctx_t  *ctx;

    ctx = zone->data;

    ngx_shmtx_lock(&ctx->shpool->mutex);
    p = ngx_slab_alloc_locked(ctx->shpool, size);
    ngx_shmtx_unlock(&ctx->shpool->mutex);

    return p;
}


void
ngx_http_dato_shm_free(ngx_shm_zone_t *zone, void *p)
{
    ngx_http_dato_shm_ctx_t  *ctx;

    ctx = zone->data;

    ngx_shmtx_lock(&ctx->shpool->mutex);
    ngx_slab_free_locked(ctx->shpool, p);
    ngx_shmtx_unlock(&ctx->shpool->mutex);
}


/* in (add) or out of the journal; "q" is in shared memory */

void
ngx_http_dato_shm_journal(ngx_shm_zone_t *zone, ngx_queue_t *q,
    ngx_uint_t add)
{
    ngx_http_dato_shm_ctx_t  *ctx;

    ctx = zone->data;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    if (add) {
        ngx_queue_insert_tail(&ctx->sh->journal, q);

    } else {
        ngx_queue_remove(q);
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);
}


/*
 * Takes out of the journal, locked, up to "n" entries for which "dead"
 * says yes, into "found"; returns how many.
 */

ngx_uint_t
ngx_http_dato_shm_journal_take(ngx_shm_zone_t *zone,
    ngx_http_dato_shm_dead_pt dead, ngx_queue_t **found, ngx_uint_t n)
{
    ngx_uint_t                k;
    ngx_queue_t              *q, *next, *journal;
    ngx_http_dato_shm_ctx_t  *ctx;

    ctx = zone->data;
    journal = &ctx->sh->journal;
    k = 0;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    for (q = ngx_queue_head(journal);
         q != ngx_queue_sentinel(journal) && k < n;
         q = next)
    {
        next = ngx_queue_next(q);

        if (dead(q)) {
            ngx_queue_remove(q);
            found[k++] = q;
        }
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    return k;
}


void
ngx_http_dato_shm_init_process(ngx_shm_zone_t *zone)
{
    ngx_http_dato_shm_ctx_t  *ctx;

    ctx = zone->data;

    ngx_http_dato_sched_init_process(ctx->shpool, ctx->sh->sched);
}


void
ngx_http_dato_stat_add(ngx_shm_zone_t *zone, ngx_uint_t stat,
    ngx_atomic_int_t n)
{
    ngx_http_dato_shm_ctx_t  *ctx;

    ctx = zone->data;

    (void) ngx_atomic_fetch_add(&ctx->sh->stats[stat], n);
}


/*
 * A record counter, in all and for its action; records whose action is
 * not known (NGX_HTTP_DATO_ACTIONS: a dead worker's that no location
 * takes) count in all only.
 */

void
ngx_http_dato_stat_records(ngx_shm_zone_t *zone, ngx_uint_t action,
    ngx_uint_t stat, ngx_atomic_int_t n)
{
    ngx_http_dato_stat_add(zone, stat, n);

    if (action < NGX_HTTP_DATO_ACTIONS) {
        ngx_http_dato_stat_add(zone, ngx_http_dato_action_stat(action, stat),
                               n);
    }
}


/* the first of an action's call counters, see ngx_http_dato_stat_call() */

ngx_uint_t
ngx_http_dato_stat_calls(ngx_uint_t action)
{
    switch (action) {
    case NGX_HTTP_DATO_UNPUBLISH:
        return NGX_HTTP_DATO_CALLS_UNPUBLISH;
    case NGX_HTTP_DATO_MOVE_TO_STAGE:
        return NGX_HTTP_DATO_CALLS_MOVE_TO_STAGE;
    default:
        return NGX_HTTP_DATO_CALLS_PUBLISH;
    }
}


ngx_uint_t
ngx_http_dato_stat_rejected(ngx_uint_t status)
{
    switch (status) {
    case 400:
        return NGX_HTTP_DATO_REJECTED_400;
    case 401:
        return NGX_HTTP_DATO_REJECTED_401;
    case 405:
        return NGX_HTTP_DATO_REJECTED_405;
    case 409:
        return NGX_HTTP_DATO_REJECTED_409;
    case 413:
        return NGX_HTTP_DATO_REJECTED_413;
    case 415:
        return NGX_HTTP_DATO_REJECTED_415;
    case 422:
        return NGX_HTTP_DATO_REJECTED_422;
    case 503:
        return NGX_HTTP_DATO_REJECTED_503;
    default:
        return NGX_HTTP_DATO_REJECTED_500;
    }
}


/* counts a call by outcome; an error is kept as the last API error */

void
ngx_http_dato_stat_call(ngx_shm_zone_t *zone, ngx_uint_t base,
    ngx_uint_t status, ngx_str_t *code)
{
    ngx_uint_t                outcome;
    ngx_http_dato_shctx_t    *sh;
    ngx_http_dato_shm_ctx_t  *ctx;

    if (status == 0) {
        outcome = NGX_HTTP_DATO_CALL_NETWORK;

    } else if (status < 300 || (base == NGX_HTTP_DATO_CALLS_JOB
                                && status == 404))
    {
        outcome = NGX_HTTP_DATO_CALL_SUCCESS;

    } else if (status == 429) {
        outcome = NGX_HTTP_DATO_CALL_RATE_LIMITED;

    } else if (status < 500) {
        outcome = NGX_HTTP_DATO_CALL_CLIENT_ERROR;

    } else {
        outcome = NGX_HTTP_DATO_CALL_SERVER_ERROR;
    }

    ngx_http_dato_stat_add(zone, base + outcome, 1);

    if (outcome == NGX_HTTP_DATO_CALL_SUCCESS) {
        return;
    }

    ctx = zone->data;
    sh = ctx->sh;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    sh->error_status = status;
    sh->error_code_len = code ? ngx_min(code->len, sizeof(sh->error_code))
                              : 0;
    if (sh->error_code_len) {
        ngx_memcpy(sh->error_code, code->data, sh->error_code_len);
    }

    sh->error_time = ngx_time();

    ngx_shmtx_unlock(&ctx->shpool->mutex);
}


void
ngx_http_dato_stat_latency(ngx_shm_zone_t *zone, ngx_uint_t which,
    ngx_msec_t ms)
{
    ngx_uint_t                  i;
    ngx_http_dato_shm_ctx_t    *ctx;
    ngx_http_dato_histogram_t  *h;

    ctx = zone->data;
    h = &ctx->sh->latency[which];

    (void) ngx_atomic_fetch_add(&h->count, 1);
    (void) ngx_atomic_fetch_add(&h->sum_ms, ms);

    /* buckets are kept apart here and made cumulative on the page */

    for (i = 0; i < NGX_HTTP_DATO_LATENCY_BUCKETS; i++) {
        if (ms <= ngx_http_dato_latency_bounds[i]) {
            (void) ngx_atomic_fetch_add(&h->buckets[i], 1);
            break;
        }
    }
}


/* a job that has just been given (status 0) or that has just finished */

void
ngx_http_dato_stat_job(ngx_shm_zone_t *zone, ngx_str_t *id,
    ngx_uint_t records, ngx_uint_t status, ngx_uint_t successful,
    ngx_uint_t failed)
{
    size_t                     len;
    ngx_uint_t                 i;
    ngx_http_dato_shctx_t     *sh;
    ngx_http_dato_shm_ctx_t   *ctx;
    ngx_http_dato_last_job_t  *job;

    ctx = zone->data;
    sh = ctx->sh;
    len = ngx_min(id->len, sizeof(job->id));

    ngx_shmtx_lock(&ctx->shpool->mutex);

    job = NULL;

    if (status) {
        for (i = 0; i < NGX_HTTP_DATO_LAST_JOBS; i++) {
            if (sh->jobs[i].id_len == len
                && ngx_memcmp(sh->jobs[i].id, id->data, len) == 0)
            {
                job = &sh->jobs[i];
                break;
            }
        }
    }

    if (job == NULL) {
        job = &sh->jobs[sh->next_job];
        sh->next_job = (sh->next_job + 1) % NGX_HTTP_DATO_LAST_JOBS;

        ngx_memzero(job, sizeof(ngx_http_dato_last_job_t));
        ngx_memcpy(job->id, id->data, len);
        job->id_len = len;
        job->records = records;
        job->sent = ngx_time();
    }

    if (status) {
        job->status = status;
        job->successful = successful;
        job->failed = failed;
        job->done = ngx_time();
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);
}


void
ngx_http_dato_shm_snapshot(ngx_shm_zone_t *zone,
    ngx_http_dato_snapshot_t *snap)
{
    ngx_uint_t                i, j;
    ngx_http_dato_shctx_t    *sh;
    ngx_http_dato_shm_ctx_t  *ctx;

    ctx = zone->data;
    sh = ctx->sh;

    ngx_memzero(snap, sizeof(ngx_http_dato_snapshot_t));

    ngx_shmtx_lock(&ctx->shpool->mutex);

    for (i = 0; i < NGX_HTTP_DATO_STATS; i++) {
        snap->stats[i] = sh->stats[i];
    }

    ngx_memcpy(snap->latency, sh->latency, sizeof(snap->latency));

    /* newest first */

    for (i = 0; i < NGX_HTTP_DATO_LAST_JOBS; i++) {
        j = (sh->next_job + NGX_HTTP_DATO_LAST_JOBS - 1 - i)
            % NGX_HTTP_DATO_LAST_JOBS;

        if (sh->jobs[j].id_len == 0) {
            break;
        }

        snap->jobs[snap->njobs++] = sh->jobs[j];
    }

    snap->error_status = sh->error_status;
    snap->error_code_len = sh->error_code_len;
    ngx_memcpy(snap->error_code, sh->error_code, sh->error_code_len);
    snap->error_time = sh->error_time;

    ngx_http_dato_sched_state(sh->sched, &snap->rate);

    ngx_shmtx_unlock(&ctx->shpool->mutex);
}
