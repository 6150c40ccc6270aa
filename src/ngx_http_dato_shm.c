
/*
 * Copyright (C) ngx_http_dato_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_dato_shm.h"


#define NGX_HTTP_DATO_SHM_SIZE   (512 * 1024)
#define NGX_HTTP_DATO_BUCKETS    16

/*
 * A call lands at the API somewhere between when it left and when its
 * answer came back.  So a slot of the call log is stamped with the time
 * the answer came: a new call may leave once the call "limit" calls ago
 * was answered a whole period before, whatever the latency was on the way.
 * A slot still out longer than this is taken as answered then (a worker
 * that died with a call out must not block the log forever).
 */
#define NGX_HTTP_DATO_RATE_OUT_MAX  60000


typedef struct {
    uint32_t                      key;
    ngx_uint_t                    limit;
    ngx_msec_t                    paused_until;
    ngx_uint_t                    next;

    /* the pace: when the next call is due, see ngx_http_dato_rate_pace() */
    ngx_msec_t                    due;

    /*
     * the last "limit" calls, oldest at "next": when each was answered,
     * or, while "out" is set, when it left; 0 is unused
     */
    ngx_msec_t                    sent[NGX_HTTP_DATO_RATE_MAX];
    u_char                        out[NGX_HTTP_DATO_RATE_MAX];
} ngx_http_dato_bucket_t;


typedef struct {
    /* a reload may bring a module build whose zone layout differs */
    size_t                        size;

    ngx_uint_t                    nbuckets;
    ngx_http_dato_bucket_t        buckets[NGX_HTTP_DATO_BUCKETS];

    ngx_atomic_t                  stats[NGX_HTTP_DATO_STATS];
    ngx_http_dato_histogram_t     latency[2];

    /* a ring of the last jobs, "next" the oldest */
    ngx_http_dato_last_job_t      jobs[NGX_HTTP_DATO_LAST_JOBS];
    ngx_uint_t                    next_job;

    ngx_uint_t                    error_status;
    u_char                        error_code[64];
    size_t                        error_code_len;
    time_t                        error_time;
} ngx_http_dato_shctx_t;


typedef struct {
    ngx_http_dato_shctx_t        *sh;
    ngx_slab_pool_t              *shpool;
} ngx_http_dato_shm_ctx_t;


static ngx_int_t ngx_http_dato_shm_init(ngx_shm_zone_t *zone, void *data);
static ngx_msec_t ngx_http_dato_shm_now(void);
static ngx_http_dato_bucket_t *ngx_http_dato_bucket(
    ngx_http_dato_shm_ctx_t *ctx, ngx_http_dato_rate_t *rate);
static ngx_msec_t ngx_http_dato_rate_pace(ngx_http_dato_bucket_t *bucket,
    ngx_msec_t gap, ngx_msec_t now);


static ngx_str_t  ngx_http_dato_shm_name = ngx_string("ngx_http_dato");


/* upper bounds of the latency histogram buckets, in ms */
ngx_msec_t  ngx_http_dato_latency_bounds[NGX_HTTP_DATO_LATENCY_BUCKETS] = {
    100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000
};


ngx_shm_zone_t *
ngx_http_dato_shm_add(ngx_conf_t *cf)
{
    ngx_shm_zone_t           *zone;
    ngx_http_dato_shm_ctx_t  *ctx;

    extern ngx_module_t  ngx_http_dato_module;

    zone = ngx_shared_memory_add(cf, &ngx_http_dato_shm_name,
                                 NGX_HTTP_DATO_SHM_SIZE,
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

    zone->init = ngx_http_dato_shm_init;
    zone->data = ctx;

    return zone;
}


/* a reload keeps the old zone, its pauses and its log of calls */

static ngx_int_t
ngx_http_dato_shm_init(ngx_shm_zone_t *zone, void *data)
{
    ngx_http_dato_shm_ctx_t  *octx = data;

    size_t                    len;
    ngx_http_dato_shm_ctx_t  *ctx;

    ctx = zone->data;

    if (octx && octx->sh->size == sizeof(ngx_http_dato_shctx_t)) {
        ctx->sh = octx->sh;
        ctx->shpool = octx->shpool;
        return NGX_OK;
    }

    ctx->shpool = (ngx_slab_pool_t *) zone->shm.addr;

    if (zone->shm.exists && octx == NULL) {
        ctx->sh = ctx->shpool->data;
        return NGX_OK;
    }

    ctx->sh = ngx_slab_calloc(ctx->shpool, sizeof(ngx_http_dato_shctx_t));
    if (ctx->sh == NULL) {
        return NGX_ERROR;
    }

    ctx->sh->size = sizeof(ngx_http_dato_shctx_t);
    ctx->shpool->data = ctx->sh;

    if (octx) {

        /* the old layout is left where it is: a few KB, until a restart */
        return NGX_OK;
    }

    len = sizeof(" in dato zone \"\"") + zone->shm.name.len;

    ctx->shpool->log_ctx = ngx_slab_alloc(ctx->shpool, len);
    if (ctx->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(ctx->shpool->log_ctx, " in dato zone \"%V\"%Z",
                &zone->shm.name);

    return NGX_OK;
}


/*
 * 0 when a call may leave now (it takes "slot", to be released when the
 * call is answered), or how many ms to wait: at most "limit" calls in any
 * "period", none while a 429 pause lasts.  A call that can wait (a job
 * poll) asks for "reserve" more free slots than it takes, so that it never
 * takes one that a publish is waiting for.
 */

ngx_msec_t
ngx_http_dato_rate_acquire(ngx_http_dato_rate_t *rate, ngx_uint_t *slot,
    ngx_uint_t reserve)
{
    ngx_msec_t                now, oldest, wait, gap;
    ngx_uint_t                i, free;
    ngx_http_dato_bucket_t   *bucket;
    ngx_http_dato_shm_ctx_t  *ctx;

    ctx = rate->zone->data;
    now = ngx_http_dato_shm_now();

    ngx_shmtx_lock(&ctx->shpool->mutex);

    bucket = ngx_http_dato_bucket(ctx, rate);

    if ((ngx_msec_int_t) (bucket->paused_until - now) > 0) {
        wait = bucket->paused_until - now;
        goto done;
    }

    oldest = bucket->sent[bucket->next];

    if (bucket->out[bucket->next]) {
        if ((ngx_msec_int_t) (now - oldest) < NGX_HTTP_DATO_RATE_OUT_MAX) {

            /* not answered yet: its period has not even begun */

            wait = ngx_min(rate->period, 100);
            goto done;
        }

        oldest += NGX_HTTP_DATO_RATE_OUT_MAX;
    }

    if (oldest && (ngx_msec_int_t) (now - oldest)
                  < (ngx_msec_int_t) rate->period)
    {
        wait = rate->period - (now - oldest);
        goto done;
    }

    gap = rate->period / bucket->limit;

    wait = ngx_http_dato_rate_pace(bucket, gap, now);

    if (wait) {
        goto done;
    }

    if (reserve) {
        free = 0;

        for (i = 0; i < bucket->limit; i++) {
            if (!bucket->out[i]
                && (bucket->sent[i] == 0
                    || (ngx_msec_int_t) (now - bucket->sent[i])
                       >= (ngx_msec_int_t) rate->period))
            {
                free++;
            }
        }

        if (free <= reserve) {
            wait = ngx_max(rate->period / bucket->limit, 50);
            goto done;
        }
    }

    *slot = bucket->next;

    bucket->due = ((ngx_msec_int_t) (bucket->due - now) > 0 ? bucket->due
                                                             : now)
                  + gap;

    bucket->sent[bucket->next] = now;
    bucket->out[bucket->next] = 1;
    bucket->next = (bucket->next + 1) % bucket->limit;
    wait = 0;

done:

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    return wait;
}


/*
 * Calls keep a steady pace of one per period / limit, after a burst of a
 * quarter of the limit, or of up to 4 calls (a "generic cell rate"): the
 * call log alone would let a flood spend the whole budget at the start of
 * each period and then hold every webhook for the rest of it.  0 when a
 * call may leave now, or how many ms to wait.
 */

static ngx_msec_t
ngx_http_dato_rate_pace(ngx_http_dato_bucket_t *bucket, ngx_msec_t gap,
    ngx_msec_t now)
{
    ngx_uint_t      burst;
    ngx_msec_int_t  ahead;

    burst = ngx_max(bucket->limit / 4, ngx_min(bucket->limit, 4));

    /* how far the calls are ahead of the pace, beyond the burst allowed */

    ahead = (ngx_msec_int_t) (bucket->due - now)
            - (ngx_msec_int_t) (gap * (burst - 1));

    return ahead > 0 ? (ngx_msec_t) ahead : 0;
}


/* the call of "slot" was answered, or failed: its period starts now */

void
ngx_http_dato_rate_release(ngx_http_dato_rate_t *rate, ngx_uint_t slot)
{
    ngx_http_dato_bucket_t   *bucket;
    ngx_http_dato_shm_ctx_t  *ctx;

    ctx = rate->zone->data;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    bucket = ngx_http_dato_bucket(ctx, rate);

    if (slot < bucket->limit && bucket->out[slot]) {
        bucket->sent[slot] = ngx_http_dato_shm_now();
        bucket->out[slot] = 0;
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);
}


void
ngx_http_dato_rate_pause(ngx_http_dato_rate_t *rate, ngx_msec_t ms)
{
    ngx_msec_t                until;
    ngx_http_dato_bucket_t   *bucket;
    ngx_http_dato_shm_ctx_t  *ctx;

    ctx = rate->zone->data;
    until = ngx_current_msec + ms;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    bucket = ngx_http_dato_bucket(ctx, rate);

    if ((ngx_msec_int_t) (until - bucket->paused_until) > 0) {
        bucket->paused_until = until;
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);
}


/*
 * ngx_current_msec is as old as the event loop's iteration; the call log
 * wants the time now, on the same clock
 */

static ngx_msec_t
ngx_http_dato_shm_now(void)
{
#if (NGX_HAVE_CLOCK_MONOTONIC)
    struct timespec  ts;

    if (clock_gettime(CLOCK_MONOTONIC, &ts) == 0) {
        return (ngx_msec_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    }
#endif

    return ngx_current_msec;
}


/* called locked; the table is small: a 17th token takes the last slot */

static ngx_http_dato_bucket_t *
ngx_http_dato_bucket(ngx_http_dato_shm_ctx_t *ctx, ngx_http_dato_rate_t *rate)
{
    ngx_uint_t               i;
    ngx_http_dato_bucket_t  *bucket;
    ngx_http_dato_shctx_t   *sh;

    sh = ctx->sh;

    for (i = 0; i < sh->nbuckets; i++) {
        if (sh->buckets[i].key == rate->key) {
            break;
        }
    }

    if (i == sh->nbuckets) {
        if (sh->nbuckets < NGX_HTTP_DATO_BUCKETS) {
            sh->nbuckets++;
        } else {
            i = NGX_HTTP_DATO_BUCKETS - 1;
        }

        ngx_memzero(&sh->buckets[i], sizeof(ngx_http_dato_bucket_t));
        sh->buckets[i].key = rate->key;
        sh->buckets[i].limit = rate->limit;
    }

    bucket = &sh->buckets[i];

    if (bucket->limit != rate->limit) {

        /*
         * the limit changed with a reload: the calls of the last period
         * are not known one by one, so the new log starts full
         */

        for (i = 0; i < rate->limit; i++) {
            bucket->sent[i] = ngx_current_msec;
            bucket->out[i] = 0;
        }

        bucket->limit = rate->limit;
        bucket->next = 0;
    }

    return bucket;
}


void
ngx_http_dato_stat_add(ngx_shm_zone_t *zone, ngx_uint_t stat,
    ngx_atomic_int_t n)
{
    ngx_http_dato_shm_ctx_t  *ctx;

    ctx = zone->data;

    (void) ngx_atomic_fetch_add(&ctx->sh->stats[stat], n);
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
    ngx_msec_t                now, pause;
    ngx_uint_t                i, j;
    ngx_http_dato_shctx_t    *sh;
    ngx_http_dato_shm_ctx_t  *ctx;

    ctx = zone->data;
    sh = ctx->sh;
    now = ngx_current_msec;

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

    for (i = 0; i < sh->nbuckets; i++) {
        pause = sh->buckets[i].paused_until;

        if ((ngx_msec_int_t) (pause - now) > 0 && pause - now > snap->pause) {
            snap->pause = pause - now;
        }
    }

    ngx_shmtx_unlock(&ctx->shpool->mutex);
}
