
/*
 * Copyright (C) ngx_http_dato_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_dato_action.h"
#include "ngx_http_dato_parse.h"


/*
 * The loop guards: a bulk publish sends a "publish" webhook per record,
 * an unpublish an "unpublish" one; a move to a workflow stage changes the
 * record's meta.stage, which DatoCMS tells as an "update".
 *
 * The default events: publish what was created or changed; move what was
 * created into the stage (a review or translation queue); unpublish, an
 * action that takes records down, only on the events a location names or
 * on IDs posted to it, never on DatoCMS's events by default.
 */

ngx_http_dato_action_t  ngx_http_dato_actions[NGX_HTTP_DATO_ACTIONS] = {

    { ngx_string("publish"), ngx_string("dato_publish"),
      "item_bulk_publish_operation", "publishing", "publish",
      NGX_HTTP_DATO_EVENT_PUBLISH,
      "it would publish in a loop: each publish sends a \"publish\" webhook",
      "a deleted record cannot be published",
      NGX_HTTP_DATO_EVENT_CREATE|NGX_HTTP_DATO_EVENT_UPDATE },

    { ngx_string("unpublish"), ngx_string("dato_unpublish"),
      "item_bulk_unpublish_operation", "unpublishing", "unpublish",
      NGX_HTTP_DATO_EVENT_UNPUBLISH,
      "it would unpublish in a loop: each unpublish sends an "
      "\"unpublish\" webhook",
      "a deleted record cannot be unpublished",
      0 },

    { ngx_string("move-to-stage"), ngx_string("dato_move_to_stage"),
      "item_bulk_move_to_stage_operation", "moving", "move_to_stage",
      NGX_HTTP_DATO_EVENT_UPDATE,
      "it would move records in a loop: each move to a stage sends an "
      "\"update\" webhook",
      "a deleted record cannot be moved to a stage",
      NGX_HTTP_DATO_EVENT_CREATE }
};
