
/*
 * Copyright (C) ngx_http_dato_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_dato_shm.h"


#define NGX_HTTP_DATO_SHM_SIZE   (512 * 1024)
#define NGX_HTTP_DATO_BUCKETS    16

/*
 * a call is stamped when it leaves and counted by the API when it lands:
 * the difference, kept as slack, must not let two periods overlap there
 */
#define NGX_HTTP_DATO_RATE_SLACK  50


typedef struct {
    uint32_t                      key;
    ngx_uint_t                    limit;
    ngx_msec_t                    paused_until;
    ngx_uint_t                    next;

    /* when the last "limit" calls left, oldest at "next"; 0 is unused */
    ngx_msec_t                    sent[NGX_HTTP_DATO_RATE_MAX];
} ngx_http_dato_bucket_t;


typedef struct {
    ngx_uint_t                    nbuckets;
    ngx_http_dato_bucket_t        buckets[NGX_HTTP_DATO_BUCKETS];
} ngx_http_dato_shctx_t;


typedef struct {
    ngx_http_dato_shctx_t        *sh;
    ngx_slab_pool_t              *shpool;
} ngx_http_dato_shm_ctx_t;


static ngx_int_t ngx_http_dato_shm_init(ngx_shm_zone_t *zone, void *data);
static ngx_http_dato_bucket_t *ngx_http_dato_bucket(
    ngx_http_dato_shm_ctx_t *ctx, ngx_http_dato_rate_t *rate);


static ngx_str_t  ngx_http_dato_shm_name = ngx_string("ngx_http_dato");


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

    if (octx) {
        ctx->sh = octx->sh;
        ctx->shpool = octx->shpool;
        return NGX_OK;
    }

    ctx->shpool = (ngx_slab_pool_t *) zone->shm.addr;

    if (zone->shm.exists) {
        ctx->sh = ctx->shpool->data;
        return NGX_OK;
    }

    ctx->sh = ngx_slab_calloc(ctx->shpool, sizeof(ngx_http_dato_shctx_t));
    if (ctx->sh == NULL) {
        return NGX_ERROR;
    }

    ctx->shpool->data = ctx->sh;

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
 * 0 when a call may leave now (and it is counted), or how many ms to wait:
 * at most "limit" calls in any "period", none while a 429 pause lasts
 */

ngx_msec_t
ngx_http_dato_rate_acquire(ngx_http_dato_rate_t *rate)
{
    ngx_msec_t                now, oldest, wait;
    ngx_http_dato_bucket_t   *bucket;
    ngx_http_dato_shm_ctx_t  *ctx;

    ctx = rate->zone->data;
    now = ngx_current_msec;

    ngx_shmtx_lock(&ctx->shpool->mutex);

    bucket = ngx_http_dato_bucket(ctx, rate);

    if ((ngx_msec_int_t) (bucket->paused_until - now) > 0) {
        wait = bucket->paused_until - now;
        goto done;
    }

    oldest = bucket->sent[bucket->next];

    if (oldest
        && (ngx_msec_int_t) (now - oldest)
           < (ngx_msec_int_t) (rate->period + NGX_HTTP_DATO_RATE_SLACK))
    {
        wait = rate->period + NGX_HTTP_DATO_RATE_SLACK - (now - oldest);
        goto done;
    }

    bucket->sent[bucket->next] = now;
    bucket->next = (bucket->next + 1) % bucket->limit;
    wait = 0;

done:

    ngx_shmtx_unlock(&ctx->shpool->mutex);

    return wait;
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
        }

        bucket->limit = rate->limit;
        bucket->next = 0;
    }

    return bucket;
}
