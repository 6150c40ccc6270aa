
/*
 * Copyright (C) ngx_http_dato_module authors
 *
 * The exit room: the worker's exit as the batches live it.  A graceful
 * exit (reload, quit) sends every batch at once instead of at the end of
 * its window; worker_shutdown_timeout, and the exit itself, end what is
 * left: spooled (ngx_http_dato_journal.c), or given up and named.
 *
 * Its state lives in the worker: the watcher, a slot of nginx's
 * connections with no socket, and the batcher's hurry and aborted flags.
 * A connection, because nginx tells the start of a graceful exit and the
 * end of worker_shutdown_timeout to connections only (modules hear of the
 * exit when it is done, in exit_process: ngx_http_dato_batcher_destroy).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_http_dato_batch_int.h"
#include "ngx_http_dato_exit.h"
#include "ngx_http_dato_job.h"
#include "ngx_http_dato_journal.h"


static void ngx_http_dato_exit_watch(ngx_event_t *ev);
static void ngx_http_dato_exit_hurry(ngx_http_dato_batcher_t *b);


/*
 * nginx tells an exiting worker's idle connections, and at
 * worker_shutdown_timeout all of them, by calling their read handler with
 * c->close set: a connection without a socket is how batches learn it.
 * Its fd is -2 while it lives: neither a socket nor the "free" mark -1,
 * which both of nginx's loops pass over.
 *
 * Under the poll method, cycle->files[] maps fds to connections, and
 * ngx_get_connection() wants an fd below its size: 0.  It would make
 * files[0] the watcher's if no connection had fd 0, and a socket that
 * gets fd 0 later would lose its events to it: files[0] is given back as
 * it was.  Other methods have no files[].
 */

ngx_int_t
ngx_http_dato_exit_init(ngx_http_dato_batcher_t *b)
{
    ngx_connection_t  *c, *saved;

    saved = ngx_cycle->files ? ngx_cycle->files[0] : NULL;

    c = ngx_get_connection((ngx_socket_t) 0, b->log);

    if (ngx_cycle->files) {
        ngx_cycle->files[0] = saved;
    }

    if (c == NULL) {
        return NGX_ERROR;
    }

    c->fd = (ngx_socket_t) -2;
    c->idle = 1;
    c->data = b;
    c->log = b->log;
    c->read->log = b->log;
    c->write->log = b->log;
    c->read->handler = ngx_http_dato_exit_watch;

    b->watcher = c;

    return NGX_OK;
}


/*
 * ngx_free_connection() clears files[c->fd] if it is the connection: with
 * fd -2 or -1 it would read before the array.  fd 0 is in range, and
 * files[0] is not the watcher's (see above).  Then fd -1, so that nginx's
 * loops pass over the free slot as over every free one.
 */

void
ngx_http_dato_exit_done(ngx_http_dato_batcher_t *b)
{
    b->watcher->fd = (ngx_socket_t) 0;
    ngx_free_connection(b->watcher);
    b->watcher->fd = (ngx_socket_t) -1;
}


static void
ngx_http_dato_exit_watch(ngx_event_t *ev)
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
        ngx_http_dato_exit_hurry(b);
        return;
    }

    /* worker_shutdown_timeout has passed: nothing more can be sent */

    ngx_http_dato_exit_abort(b, "worker_shutdown_timeout has passed");
}


static void
ngx_http_dato_exit_hurry(ngx_http_dato_batcher_t *b)
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


void
ngx_http_dato_exit_abort(ngx_http_dato_batcher_t *b, const char *why)
{
    ngx_queue_t            *q;
    ngx_http_dato_batch_t  *batch;

    b->aborted = 1;
    b->abort_reason = why;

    if (b->spool.len) {
        ngx_http_dato_journal_spool(b);
    }

    /* calls out now come back through their answer handlers */

    ngx_http_dato_curl_abort(b->bridge);

    while (!ngx_queue_empty(&b->batches)) {
        q = ngx_queue_head(&b->batches);
        batch = ngx_queue_data(q, ngx_http_dato_batch_t, all);

        if (batch->state == NGX_HTTP_DATO_BATCH_JOB) {

            /* published already: only its result will not be known */

            ngx_http_dato_job_end(batch, NGX_LOG_INFO,
                                  "was not followed to its end: the "
                                  "worker process is exiting");
            continue;
        }

        ngx_http_dato_batch_give_up(batch, 0, NULL, NULL, why);
    }
}
