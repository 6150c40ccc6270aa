
/*
 * Copyright (C) ngx_http_dato_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_dato_seen.h"
#include "ngx_http_dato_shm.h"


/* the root of the guard's IDs, made in the zone when first needed */
typedef struct {
    ngx_rbtree_t                  rbtree;
    ngx_rbtree_node_t             sentinel;

    /* newest first: the tail is forgotten first */
    ngx_queue_t                   lru;
    ngx_uint_t                    count;
    size_t                        bytes;
} ngx_http_dato_seen_root_t;


/*
 * One ID: "status" is 0 while the call that claimed it waits for its
 * answer, whose bytes follow the ID's in "data", in a room of "room"
 * bytes made with the claim: most answers fit, and are written in place.
 */

typedef struct {
    ngx_rbtree_node_t             node;
    ngx_queue_t                   queue;
    uint32_t                      scope;
    u_char                        kind;
    u_short                       status;
    u_short                       id_len;
    u_short                       answer_len;
    u_short                       room;
    time_t                        added;
    u_char                        data[1];
} ngx_http_dato_seen_node_t;


static ngx_http_dato_seen_root_t *ngx_http_dato_seen_root(
    ngx_http_dato_seen_t *seen, ngx_slab_pool_t **shpool);
static ngx_http_dato_seen_node_t *ngx_http_dato_seen_find(
    ngx_http_dato_seen_root_t *root, ngx_http_dato_seen_t *seen,
    ngx_uint_t hash);
static ngx_http_dato_seen_node_t *ngx_http_dato_seen_add(
    ngx_slab_pool_t *shpool, ngx_http_dato_seen_root_t *root,
    ngx_http_dato_seen_t *seen, ngx_uint_t hash, ngx_str_t *answer,
    size_t room, size_t limit);
static void ngx_http_dato_seen_delete(ngx_slab_pool_t *shpool,
    ngx_http_dato_seen_root_t *root, ngx_http_dato_seen_node_t *sn);
static void ngx_http_dato_seen_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static ngx_int_t ngx_http_dato_seen_cmp(ngx_http_dato_seen_node_t *sn,
    uint32_t scope, u_char kind, u_char *id, size_t len);
static ngx_uint_t ngx_http_dato_seen_hash(ngx_http_dato_seen_t *seen);


/*
 * NGX_OK: the ID was accepted before, and "answer" is what it was
 * answered.  NGX_BUSY: a call with the ID waits for its answer now.
 * NGX_DECLINED: the ID is new, and this call holds its claim (seen->claimed)
 * unless the guard had no room for it.
 */

ngx_int_t
ngx_http_dato_seen_claim(ngx_http_dato_seen_t *seen, ngx_pool_t *pool,
    ngx_http_dato_seen_answer_t *answer)
{
    time_t                      now;
    ngx_int_t                   rc;
    ngx_uint_t                  hash;
    ngx_slab_pool_t            *shpool;
    ngx_http_dato_seen_node_t  *sn;
    ngx_http_dato_seen_root_t  *root;

    seen->claimed = 0;

    if (seen->id.len == 0 || seen->id.len > 0xffff) {
        return NGX_DECLINED;
    }

    hash = ngx_http_dato_seen_hash(seen);
    seen->hash = hash;
    now = ngx_time();

    root = ngx_http_dato_seen_root(seen, &shpool);

    if (root == NULL) {
        ngx_shmtx_unlock(&shpool->mutex);
        return NGX_DECLINED;
    }

    sn = ngx_http_dato_seen_find(root, seen, hash);

    if (sn
        && ((sn->status == 0 && now - sn->added > NGX_HTTP_DATO_SEEN_PENDING)
            || (sn->status && seen->ttl && now - sn->added > seen->ttl)))
    {
        ngx_http_dato_seen_delete(shpool, root, sn);
        sn = NULL;
    }

    if (sn == NULL) {
        sn = ngx_http_dato_seen_add(shpool, root, seen, hash, NULL,
                                    NGX_HTTP_DATO_SEEN_ROOM,
                                    seen->zone->shm.size / 4);
        seen->claimed = (sn != NULL);
        rc = NGX_DECLINED;

    } else if (sn->status == 0) {
        rc = NGX_BUSY;

    } else {
        answer->status = sn->status;
        answer->body.len = sn->answer_len;
        answer->body.data = ngx_pnalloc(pool, sn->answer_len + 1);

        if (answer->body.data) {
            ngx_memcpy(answer->body.data, sn->data + sn->id_len,
                       sn->answer_len);

        } else {
            answer->body.len = 0;
        }

        rc = NGX_OK;
    }

    ngx_shmtx_unlock(&shpool->mutex);

    return rc;
}


/*
 * The claiming call's answer: a 2xx is kept for the calls that repeat it;
 * anything else lets the ID's next call through, as if never seen.
 */

void
ngx_http_dato_seen_settle(ngx_http_dato_seen_t *seen, ngx_uint_t status,
    ngx_str_t *body)
{
    ngx_uint_t                  hash;
    ngx_str_t                   none = ngx_null_string;
    ngx_slab_pool_t            *shpool;
    ngx_http_dato_seen_node_t  *sn;
    ngx_http_dato_seen_root_t  *root;

    if (!seen->claimed) {
        return;
    }

    seen->claimed = 0;
    hash = seen->hash;

    root = ngx_http_dato_seen_root(seen, &shpool);

    if (root == NULL) {
        ngx_shmtx_unlock(&shpool->mutex);
        return;
    }

    sn = ngx_http_dato_seen_find(root, seen, hash);

    /* an ID evicted meanwhile, or claimed again after ours went stale */
    if (sn == NULL || sn->status != 0) {
        ngx_shmtx_unlock(&shpool->mutex);
        return;
    }

    if (status < 200 || status >= 300) {
        ngx_http_dato_seen_delete(shpool, root, sn);
        ngx_shmtx_unlock(&shpool->mutex);
        return;
    }

    if (body->len > NGX_HTTP_DATO_SEEN_ANSWER_MAX) {
        body = &none;
    }

    if (body->len > sn->room) {
        ngx_http_dato_seen_delete(shpool, root, sn);

        sn = ngx_http_dato_seen_add(shpool, root, seen, hash, body, 0,
                                    seen->zone->shm.size / 4);
    }

    if (sn) {
        if (body->len) {
            ngx_memcpy(sn->data + sn->id_len, body->data, body->len);
        }

        sn->answer_len = (u_short) body->len;
        sn->status = (u_short) status;
    }

    ngx_shmtx_unlock(&shpool->mutex);
}


/* returns with the zone locked, whatever it returns */

static ngx_http_dato_seen_root_t *
ngx_http_dato_seen_root(ngx_http_dato_seen_t *seen, ngx_slab_pool_t **shpool)
{
    void                       **slot;
    ngx_http_dato_seen_root_t   *root;

    slot = ngx_http_dato_shm_seen(seen->zone, shpool);

    ngx_shmtx_lock(&(*shpool)->mutex);

    root = *slot;

    if (root == NULL) {
        root = ngx_slab_calloc_locked(*shpool,
                                      sizeof(ngx_http_dato_seen_root_t));
        if (root == NULL) {
            return NULL;
        }

        ngx_rbtree_init(&root->rbtree, &root->sentinel,
                        ngx_http_dato_seen_insert);
        ngx_queue_init(&root->lru);

        *slot = root;
    }

    return root;
}


static ngx_http_dato_seen_node_t *
ngx_http_dato_seen_find(ngx_http_dato_seen_root_t *root,
    ngx_http_dato_seen_t *seen, ngx_uint_t hash)
{
    ngx_int_t                   rc;
    ngx_rbtree_node_t          *node, *sentinel;
    ngx_http_dato_seen_node_t  *sn;

    node = root->rbtree.root;
    sentinel = root->rbtree.sentinel;

    while (node != sentinel) {

        if (hash != node->key) {
            node = (hash < node->key) ? node->left : node->right;
            continue;
        }

        sn = (ngx_http_dato_seen_node_t *) node;

        rc = ngx_http_dato_seen_cmp(sn, seen->scope, (u_char) seen->kind,
                                    seen->id.data, seen->id.len);
        if (rc == 0) {
            return sn;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    return NULL;
}


/* the oldest IDs go first when the guard is at its bounds or the zone full */

static ngx_http_dato_seen_node_t *
ngx_http_dato_seen_add(ngx_slab_pool_t *shpool,
    ngx_http_dato_seen_root_t *root, ngx_http_dato_seen_t *seen,
    ngx_uint_t hash, ngx_str_t *answer, size_t room, size_t limit)
{
    size_t                      size;
    ngx_queue_t                *q;
    ngx_http_dato_seen_node_t  *sn;

    if (answer && answer->len > room) {
        room = answer->len;
    }

    size = offsetof(ngx_http_dato_seen_node_t, data) + seen->id.len + room;

    for ( ;; ) {

        sn = NULL;

        if (root->count < NGX_HTTP_DATO_SEEN_MAX
            && root->bytes + size <= limit)
        {
            sn = ngx_slab_alloc_locked(shpool, size);
            if (sn) {
                break;
            }
        }

        if (ngx_queue_empty(&root->lru)) {
            return NULL;
        }

        q = ngx_queue_last(&root->lru);
        ngx_http_dato_seen_delete(shpool, root,
                     ngx_queue_data(q, ngx_http_dato_seen_node_t, queue));
    }

    sn->node.key = hash;
    sn->scope = seen->scope;
    sn->kind = (u_char) seen->kind;
    sn->status = 0;
    sn->id_len = (u_short) seen->id.len;
    sn->answer_len = 0;
    sn->room = (u_short) room;
    sn->added = ngx_time();

    ngx_memcpy(sn->data, seen->id.data, seen->id.len);

    ngx_rbtree_insert(&root->rbtree, &sn->node);
    ngx_queue_insert_head(&root->lru, &sn->queue);

    root->count++;
    root->bytes += size;

    return sn;
}


static void
ngx_http_dato_seen_delete(ngx_slab_pool_t *shpool,
    ngx_http_dato_seen_root_t *root, ngx_http_dato_seen_node_t *sn)
{
    root->count--;
    root->bytes -= offsetof(ngx_http_dato_seen_node_t, data) + sn->id_len
                   + sn->room;

    ngx_rbtree_delete(&root->rbtree, &sn->node);
    ngx_queue_remove(&sn->queue);
    ngx_slab_free_locked(shpool, sn);
}


static void
ngx_http_dato_seen_insert(ngx_rbtree_node_t *temp, ngx_rbtree_node_t *node,
    ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t          **p;
    ngx_http_dato_seen_node_t   *sn;

    sn = (ngx_http_dato_seen_node_t *) node;

    for ( ;; ) {

        if (node->key != temp->key) {
            p = (node->key < temp->key) ? &temp->left : &temp->right;

        } else {
            p = (ngx_http_dato_seen_cmp((ngx_http_dato_seen_node_t *) temp,
                                        sn->scope, sn->kind, sn->data,
                                        sn->id_len)
                 < 0)
                ? &temp->left : &temp->right;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


/* < 0: the ID sorts before the node's, so it is found on the left */

static ngx_int_t
ngx_http_dato_seen_cmp(ngx_http_dato_seen_node_t *sn, uint32_t scope,
    u_char kind, u_char *id, size_t len)
{
    if (scope != sn->scope) {
        return (scope < sn->scope) ? -1 : 1;
    }

    if (kind != sn->kind) {
        return (kind < sn->kind) ? -1 : 1;
    }

    return ngx_memn2cmp(id, sn->data, len, sn->id_len);
}


static ngx_uint_t
ngx_http_dato_seen_hash(ngx_http_dato_seen_t *seen)
{
    return ngx_crc32_short(seen->id.data, seen->id.len)
           ^ seen->scope ^ seen->kind;
}
