
/*
 * Copyright (C) ngx_http_dato_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_dato_batch.h"
#include "ngx_http_dato_guard.h"


/*
 * A webhook-id is remembered for twice the signature's tolerance: past
 * it, a replay fails the timestamp check anyway.  A webhook_call_id is
 * remembered until the guard needs its room: DatoCMS retries for days.
 */
#define NGX_HTTP_DATO_GUARD_ID_TTL  (2 * NGX_HTTP_DATO_SIGN_TOLERANCE)


static ngx_table_elt_t *ngx_http_dato_guard_header(ngx_http_request_t *r,
    u_char *name, size_t len);
static void ngx_http_dato_guard_unclaim(void *data);


/* NGX_OK: the request carries the configured header with its value */

ngx_int_t
ngx_http_dato_guard_secret(ngx_http_request_t *r,
    ngx_http_dato_loc_conf_t *dlcf)
{
    u_char            diff;
    ngx_uint_t        j, n;
    ngx_table_elt_t  *h;

    h = ngx_http_dato_guard_header(r, dlcf->secret_header.data,
                                   dlcf->secret_header.len);
    if (h == NULL) {
        return NGX_DECLINED;
    }

    /* in constant time: how much of the secret matches is not told */

    n = dlcf->secret.len;
    diff = (h->value.len != n);

    for (j = 0; j < n; j++) {
        diff |= dlcf->secret.data[j]
                ^ (j < h->value.len ? h->value.data[j] : 0);
    }

    return diff ? NGX_DECLINED : NGX_OK;
}


/* *id: the call's webhook-id, once the signature holds */

ngx_http_dato_sign_rc_e
ngx_http_dato_guard_signature(ngx_http_request_t *r,
    ngx_http_dato_loc_conf_t *dlcf, ngx_str_t *body, ngx_str_t *id)
{
    ngx_table_elt_t               *h;
    ngx_http_dato_sign_rc_e        rc;
    ngx_http_dato_sign_headers_t   sh;

    ngx_memzero(&sh, sizeof(ngx_http_dato_sign_headers_t));

    h = ngx_http_dato_guard_header(r, (u_char *) "webhook-id", 10);
    if (h) {
        sh.id = h->value;
    }

    h = ngx_http_dato_guard_header(r, (u_char *) "webhook-timestamp", 17);
    if (h) {
        sh.timestamp = h->value;
    }

    h = ngx_http_dato_guard_header(r, (u_char *) "webhook-signature", 17);
    if (h) {
        sh.signature = h->value;
    }

    rc = ngx_http_dato_sign_verify(dlcf->signing_keys, &sh, body, ngx_time(),
                                   r->pool);

    if (rc == NGX_HTTP_DATO_SIGN_OK) {
        *id = sh.id;
        return rc;
    }

    /*
     * as auth_basic: no credentials at all is "info", wrong ones "error";
     * the webhook-id, checked printable, is the sender's message ID
     */

    if (rc == NGX_HTTP_DATO_SIGN_MISSING || rc == NGX_HTTP_DATO_SIGN_BAD_ID) {
        ngx_log_error((rc == NGX_HTTP_DATO_SIGN_MISSING ? NGX_LOG_INFO
                                                        : NGX_LOG_ERR),
                      r->connection->log, 0,
                      "dato: webhook signature refused: %s",
                      ngx_http_dato_sign_reason(rc));

    } else {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "dato: webhook signature refused: %s, webhook-id \"%V\"",
                      ngx_http_dato_sign_reason(rc), &sh.id);
    }

    return rc;
}


/*
 * NGX_DECLINED: the call is new (or has no ID to know it by) and goes on
 * to be queued.  NGX_OK: it was accepted before, "answer" is what it was
 * answered.  NGX_BUSY: the same call is being handled now.
 */

ngx_int_t
ngx_http_dato_guard_replay(ngx_http_request_t *r,
    ngx_http_dato_loc_conf_t *dlcf, ngx_str_t *signed_id,
    ngx_http_dato_parse_result_t *res, ngx_http_dato_seen_answer_t *answer)
{
    u_char                *id;
    ngx_int_t              rc;
    ngx_pool_cleanup_t    *cln;
    ngx_http_dato_seen_t  *seen;

    if (signed_id->len == 0 && res->call_id.len == 0) {
        return NGX_DECLINED;
    }

    seen = ngx_pcalloc(r->pool, sizeof(ngx_http_dato_seen_t));
    if (seen == NULL) {
        return NGX_ERROR;
    }

    seen->zone = dlcf->target->rate.zone;
    seen->scope = dlcf->target->key;

    /* a signed call's webhook-id passed the signature check */

    if (signed_id->len) {
        seen->kind = NGX_HTTP_DATO_SEEN_WEBHOOK_ID;
        seen->id = *signed_id;
        seen->ttl = NGX_HTTP_DATO_GUARD_ID_TTL;

    } else {
        seen->kind = NGX_HTTP_DATO_SEEN_CALL_ID;
        seen->id.data = (u_char *) res->call_id.data;
        seen->id.len = res->call_id.len;
        seen->ttl = 0;
    }

    rc = ngx_http_dato_seen_claim(seen, r->pool, answer);

    if (seen->claimed) {

        /* the ID outlives the request body it points into */

        id = ngx_pstrdup(r->pool, &seen->id);
        cln = ngx_pool_cleanup_add(r->pool, 0);

        if (id == NULL || cln == NULL) {
            ngx_http_dato_seen_settle(seen, 0, NULL);
            return NGX_ERROR;
        }

        seen->id.data = id;
        cln->handler = ngx_http_dato_guard_unclaim;
        cln->data = seen;
    }

    if (rc == NGX_OK) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "dato: %s \"%V\" was accepted before: answered as "
                      "then, nothing queued",
                      seen->kind == NGX_HTTP_DATO_SEEN_WEBHOOK_ID
                      ? "webhook-id" : "webhook_call_id", &seen->id);
    }

    return rc;
}


/* the webhook's answer: what a replay of the call will be answered */

void
ngx_http_dato_guard_settle(ngx_http_request_t *r, ngx_uint_t status,
    ngx_buf_t *b)
{
    ngx_str_t            body;
    ngx_pool_cleanup_t  *cln;

    for (cln = r->pool->cleanup; cln; cln = cln->next) {

        if (cln->handler == ngx_http_dato_guard_unclaim) {
            body.data = b->pos;
            body.len = b->last - b->pos;

            ngx_http_dato_seen_settle(cln->data, status, &body);
            cln->handler = NULL;
            return;
        }
    }
}


/* a request that ends without an answer gives its claim back */

static void
ngx_http_dato_guard_unclaim(void *data)
{
    ngx_http_dato_seen_t  *seen = data;

    ngx_http_dato_seen_settle(seen, 0, NULL);
}


static ngx_table_elt_t *
ngx_http_dato_guard_header(ngx_http_request_t *r, u_char *name, size_t len)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return NULL;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == len
            && ngx_strncasecmp(h[i].key.data, name, len) == 0)
        {
            return &h[i];
        }
    }
}
