
/*
 * Copyright (C) ngx_http_dato_module authors
 *
 * The replay guard: the IDs of the calls already accepted (a Standard
 * Webhooks webhook-id, DatoCMS's webhook_call_id) and what each was
 * answered, so that a call sent again is answered as it was and its
 * records are queued once.
 *
 * Its state lives in the shared zone: every worker must see the IDs that
 * another accepted, and a reload or a worker's death must not forget them.
 * It is bounded: past NGX_HTTP_DATO_SEEN_MAX IDs, or when the zone is full,
 * the oldest is forgotten first.
 */


#ifndef _NGX_HTTP_DATO_SEEN_H_INCLUDED_
#define _NGX_HTTP_DATO_SEEN_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


/* the most IDs kept, and the longest answer kept with one */
#define NGX_HTTP_DATO_SEEN_MAX         8192
#define NGX_HTTP_DATO_SEEN_ANSWER_MAX  4096

/* the room a claim makes for its answer: a 202 with a job or two fits */
#define NGX_HTTP_DATO_SEEN_ROOM        128

/* a claim older than this was made by a worker that died meanwhile */
#define NGX_HTTP_DATO_SEEN_PENDING     120


/* the two kinds of ID, which never match each other */
typedef enum {
    NGX_HTTP_DATO_SEEN_WEBHOOK_ID = 1,
    NGX_HTTP_DATO_SEEN_CALL_ID
} ngx_http_dato_seen_kind_e;


/* one call's ID, and where the module accepted it */
typedef struct {
    ngx_shm_zone_t               *zone;

    /* the location: the same ID sent to two of them is two calls */
    uint32_t                      scope;
    ngx_http_dato_seen_kind_e     kind;
    ngx_str_t                     id;

    /* how long an accepted ID is remembered, in seconds; 0: until evicted */
    time_t                        ttl;

    /* set by ngx_http_dato_seen_claim() */
    ngx_uint_t                    hash;

    /* set by ngx_http_dato_seen_claim(): this call holds the ID's claim */
    unsigned                      claimed:1;
} ngx_http_dato_seen_t;


/* what an earlier call with the same ID was answered */
typedef struct {
    ngx_uint_t                    status;
    ngx_str_t                     body;
} ngx_http_dato_seen_answer_t;


ngx_int_t ngx_http_dato_seen_claim(ngx_http_dato_seen_t *seen,
    ngx_pool_t *pool, ngx_http_dato_seen_answer_t *answer);
void ngx_http_dato_seen_settle(ngx_http_dato_seen_t *seen,
    ngx_uint_t status, ngx_str_t *body);


#endif /* _NGX_HTTP_DATO_SEEN_H_INCLUDED_ */
