#!/usr/bin/perl

# Payloads accepted by a dato_publish location, the errors it answers, and
# exactly what reaches the (mock) DatoCMS API: headers, bodies, batching of
# big bodies, dedup and environments.

###########################################################################

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use DatoTest qw(uuid_id ids_of hook ids_body bulk_body json_headers post_req
                decode_json check_error);

###########################################################################

# no rate limiting in this file: every call must be accepted
my $t = DatoTest->with_mock(workers => 1, mock => ['--limit', '10000'],
                            server => <<'EOF');
        location /hook {
            dato_publish;
            dato_batch_window 100ms;
        }

        location /none {
            dato_publish;
            dato_publish_wait none;
            dato_batch_window 300ms;
        }

        location /env {
            dato_publish;
            dato_environment sandbox-1;
            dato_batch_window 100ms;
        }

        location /events {
            dato_publish;
            dato_publish_events create update unpublish;
            dato_batch_window 100ms;
        }

        location /big {
            dato_publish;
            dato_publish_wait none;
            dato_batch_window 100ms;
            client_body_buffer_size 1k;
            client_max_body_size 1m;
        }
EOF

###########################################################################
# helpers

my @bodies;     # every response body, checked for the token at the end

# a response, its body kept in @bodies
sub kept {
    my ($r) = @_;
    push @bodies, $r->{body} // '';
    return $r;
}

# POST as JSON (%h: other headers instead of Content-Type: application/json)
sub post {
    my ($path, $body, %h) = @_;
    return kept($t->post_json($path, $body, %h ? (headers => {%h}) : ()));
}

sub sorted { [ sort @{ $_[0] } ] }

# the ids of the first bulk publish call, sorted
sub first_ids { my @p = $t->publishes; return sorted($p[0] ? $p[0]{ids} : []) }

# 202 with exactly one job, accepted; returns the job id
sub check_accepted {
    my ($r, $records, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    is($r->{status}, 202, "$name: 202") or diag $r->{raw};
    like($r->{headers}{'content-type'} // '', qr{^application/json\b},
         "$name: JSON content type");
    my $job = ref $r->{json} eq 'HASH' && ref $r->{json}{data} eq 'ARRAY'
              && ref $r->{json}{data}[0] eq 'HASH' ? $r->{json}{data}[0]{id} : undef;
    like($job // '', qr/^\d+\z/, "$name: a decimal job id");
    is_deeply($r->{json},
              { data => [ { type => 'job', id => $job } ],
                meta => { records => $records, status => 'accepted' } },
              "$name: exact body") or diag $r->{body};
    return $job;
}

sub check_ignored {
    my ($r, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    is($r->{status}, 200, "$name: 200") or diag $r->{raw};
    like($r->{headers}{'content-type'} // '', qr{^application/json\b},
         "$name: JSON content type");
    my $j = $r->{json};
    ok(ref $j eq 'HASH' && ref $j->{meta} eq 'HASH', "$name: meta object")
        or return;
    is_deeply([ sort keys %$j ], ['meta'], "$name: only meta");
    is_deeply([ sort keys %{ $j->{meta} } ], [qw(reason status)],
              "$name: meta has status and reason");
    is($j->{meta}{status}, 'ignored', "$name: status ignored");
    like($j->{meta}{reason} // '', qr/\S/, "$name: a reason is given");
}

my $A = uuid_id(1);
my $B = uuid_id(2);
my $C = uuid_id(3);

###########################################################################
# webhook update event: the call, byte for byte

$t->mock_reset;
my $job = check_accepted(post('/hook', hook($A, event_type => 'update')), 1,
                         'update webhook');
my @p = $t->publishes;
my $q = $p[0] // { headers => {} };
my $h = $q->{headers};

is(scalar @p, 1, 'update webhook: exactly one bulk publish call');
is($q->{method}, 'POST', 'update webhook: POST');
is($q->{path}, '/items/bulk/publish', 'update webhook: path');
is($q->{status}, 202, 'update webhook: the mock accepted the call');
is($q->{job}, $job, 'update webhook: answered job id is the mock\'s job');
is_deeply($q->{ids}, [$A], 'update webhook: the record id was sent');
is_deeply(eval { decode_json($q->{body}) }, bulk_body($A),
          'update webhook: exact API body');
is($h->{authorization}, 'Bearer test-token', 'Authorization header');
is($h->{accept}, 'application/json', 'Accept header');
is($h->{'x-api-version'}, '3', 'X-Api-Version header');
is($h->{'content-type'}, 'application/vnd.api+json', 'Content-Type header');
like($h->{'user-agent'} // '', qr{^ngx_http_dato_module/\d}, 'User-Agent header');
ok(!exists $h->{'x-environment'}, 'no X-Environment for the primary environment');

###########################################################################
# other events

$t->mock_reset;
check_accepted(post('/hook', hook($B, event_type => 'create')), 1, 'create webhook');
@p = $t->publishes;
is(scalar @p, 1, 'create webhook: one call');
is_deeply($p[0] && $p[0]{ids}, [$B], 'create webhook: record published');

$t->mock_reset;
for my $c (
    # [location, name, webhook]
    ['/hook', 'publish event with default dato_publish_events',
        event_type => 'publish', status => 'published'],
    ['/hook', 'delete event with default dato_publish_events',
        event_type => 'delete', status => 'published'],
    ['/hook', 'unpublish event with default dato_publish_events',
        event_type => 'unpublish', status => 'published'],
    ['/hook', 'entity_type item_type', entity_type => 'item_type'],
    ['/hook', 'entity_type upload', entity_type => 'upload'],
    ['/events', 'publish event on /events',
        event_type => 'publish', status => 'published'],
) {
    my ($path, $name, %wh) = @$c;
    check_ignored(post($path, hook($C, %wh)), $name);
}
Time::HiRes::sleep(0.4);
is(scalar($t->publishes), 0, 'ignored webhooks sent nothing to the API');

$t->mock_reset;
check_accepted(post('/events', hook($C, event_type => 'unpublish')), 1,
               'unpublish on /events');
@p = $t->publishes;
is(scalar @p, 1, 'unpublish on /events: one call');
is_deeply($p[0] && $p[0]{ids}, [$C], 'unpublish on /events: record published');

###########################################################################
# bulk and id lists

$t->mock_reset;
my @ids = ($A, '43012949', $C);
check_accepted(post('/hook', bulk_body(@ids)), 3, 'bulk publish body with 3 items');
@p = $t->publishes;
is(scalar @p, 1, 'bulk body: one call');
is_deeply(first_ids(), sorted(\@ids), 'bulk body: the 3 records');
is($p[0] && $p[0]{status}, 202, 'bulk body: mock accepted');

$t->mock_reset;
@ids = (uuid_id(10), uuid_id(11));
check_accepted(post('/hook', { ids => \@ids }), 2, '{"ids":[...]}');
is(scalar($t->publishes), 1, 'ids list: one call');
is_deeply(first_ids(), sorted(\@ids), 'ids list: both records');

###########################################################################
# invalid payloads: [name, body, status, { test name => what the detail
# matches }]; each gets check_error()'s tests

my $wrong_type = bulk_body($A);
$wrong_type->{data}{type} = 'item_bulk_unpublish_operation';
my $upload = bulk_body($A);
$upload->{data}{relationships}{items}{data}[0]{type} = 'upload';

my @invalid = (
    ['bad JSON', '{"ids":["X9_l7IdvRq26r7e2wn353Q"', 400],
    ['non-object JSON', '[1]', 422],
    # valid JSON that is not an object: 422 like [1], not "invalid JSON"
    ['top-level JSON string', '"X9_l7IdvRq26r7e2wn353Q"', 422],
    ['empty ids list', '{"ids":[]}', 422],
    ['invalid ids', '{"ids":["abc", 12, null, "X9_l7IdvRq26r7e2wn353Q"]}', 422, {
        'invalid ids: detail names "abc"' => qr/"abc"/,
        'invalid ids: detail names 12' => qr/(?<![\w.])12(?![\w.])/,
        'invalid ids: detail names null' => qr/\bnull\b/,
        # a match where the valid id is nowhere
        'invalid ids: the valid id is not named'
            => qr/\A(?!.*X9_l7IdvRq26r7e2wn353Q)/s,
    }],
    ['bulk body with wrong data.type', $wrong_type, 422],
    ['bulk item of type upload', $upload, 422, {
        'bulk item of type upload: detail names the item' => qr/\Q$A\E/,
    }],
    ['unknown object', '{"foo":1}', 422],
    ['webhook entity without id', hook(undef), 422],
    ['duplicate keys', '{"ids":["43012949"],"ids":["43012950"]}', 400],
    (map { ["id $_", { ids => [$_] }, 422, { "id $_: detail names it" => qr/\Q$_\E/ }] }
         'X9_l7IdvRq26r7e2wn353QA',     # 23 chars
         'X9+l7IdvRq26r7e2wn353Q',      # '+' is not URL-safe base64
         '043012949'),                  # decimal with a leading zero
);

$t->mock_reset;
for my $c (@invalid) {
    my ($name, $body, $code, $detail) = @$c;
    my $e = check_error(post('/hook', $body), $code, $name);
    for my $what (sort keys %{ $detail || {} }) {
        like($e ? $e->{detail} : '', $detail->{$what}, $what);
    }
}

###########################################################################
# method, content type: [name, method, Content-Type (undef: none), body,
# status]; a 405 says Allow: POST

my $ids_a = ids_body($A);
for my $c (
    ['GET', 'GET', undef, undef, 405],
    ['PUT', 'PUT', 'application/json', $ids_a, 405],
    ['text/plain', 'POST', 'text/plain', $ids_a, 415],
    ['no content type', 'POST', undef, $ids_a, 415],
    ['form content type', 'POST', 'application/x-www-form-urlencoded', $ids_a, 415],
) {
    my ($name, $method, $ct, $body, $code) = @$c;
    my $r = kept($t->json_request(method => $method, path => '/hook', body => $body,
                                  headers => defined $ct ? { 'Content-Type' => $ct } : {}));
    check_error($r, $code, $name);
    is($r->{headers}{allow}, 'POST', "$name: Allow: POST") if $code == 405;
}

Time::HiRes::sleep(0.4);
@p = $t->publishes;
is(scalar @p, 0, 'no invalid request reached the API')
    or diag explain [ map { $_->{body} } @p ];

for my $ct ('application/vnd.api+json', 'application/json; charset=utf-8',
            'Application/JSON')
{
    $t->mock_reset;
    my $id = uuid_id(length $ct);
    check_accepted(post('/hook', { ids => [$id] }, 'Content-Type' => $ct), 1,
                   "Content-Type $ct");
    @p = $t->publishes;
    is_deeply($p[0] && $p[0]{ids}, [$id], "Content-Type $ct: record published");
}

###########################################################################
# big bodies: 3000 ids in a temporary file, or chunked

for my $c (['3000 ids in a temp file', 10000],
           ['3000 ids chunked', 20000, chunked => 1, chunk_size => 4096])
{
    my ($name, $first, %req) = @$c;
    $t->mock_reset;
    my @ids = ids_of($first, 3000);
    my $mark = $t->log_mark;
    my $r = kept($t->post_json('/big', { ids => \@ids }, %req));
    my $got = sub {
        my %seen;
        $seen{$_}++ for map { @{ $_->{ids} } } $t->publishes;
        return scalar keys %seen;
    };

    is($r->{status}, 202, "$name: 202") or diag $r->{raw};
    is_deeply($r->{json}, { data => [], meta => { records => 3000, status => 'queued' } },
              "$name: records 3000, queued") or diag $r->{body};
    like($t->error_log_since($mark), qr/client request body is buffered to a temporary file/,
         "$name: nginx kept the body in a temporary file");
    ok($t->wait_for(sub { $got->() >= 3000 }, 8), "$name: all 3000 ids reached the API")
        or diag 'got ' . $got->();

    Time::HiRes::sleep(0.3);
    my @p = $t->publishes;
    my @all = map { @{ $_->{ids} } } @p;

    is(scalar @all, 3000, "$name: 3000 ids sent, none twice");
    is_deeply(sorted(\@all), sorted(\@ids), "$name: exactly the ids of the body");
    is(scalar(grep { @{ $_->{ids} } > 200 } @p), 0, "$name: no call above 200 ids");
    is(scalar @p, 15, "$name: 15 calls of 200");
    is(scalar(grep { $_->{status} != 202 } @p), 0, "$name: every call accepted");
}

###########################################################################
# dedup

$t->mock_reset;
my $r = post('/hook', { ids => [$A, $A, $B] });
is($r->{status}, 202, 'ids A, A, B: 202') or diag $r->{raw};
is($r->{json} && $r->{json}{meta}{status}, 'accepted', 'ids A, A, B: accepted');
is(scalar($t->publishes), 1, 'ids A, A, B: one call');
is_deeply(first_ids(), sorted([$A, $B]), 'ids A, A, B: A and B once each');

$t->mock_reset;
my $id = uuid_id(77);
my @r = map { kept($_) } $t->parallel_requests([ map {
    post_req('/none', hook($id, webhook_call_id => "9000$_")) } 1 .. 2 ]);
is($r[$_]{status}, 202, "same id twice in a window: webhook $_ 202") for 0, 1;
ok($t->wait_for(sub { scalar $t->publishes }, 3), 'same id twice: a call was made');
Time::HiRes::sleep(0.6);
@p = $t->publishes;
is(scalar @p, 1, 'same id twice in a window: one call');
is_deeply($p[0] && $p[0]{ids}, [$id], 'same id twice in a window: the id once');

###########################################################################
# environments: [location, name, X-Environment (undef: none), webhook]

for my $c (
    ['/hook', 'sandbox webhook', 'sandbox-x',
        environment => 'sandbox-x', is_environment_primary => 0],
    ['/hook', 'primary webhook named sandbox-x', undef,
        environment => 'sandbox-x', is_environment_primary => 1],
    ['/env', 'dato_environment overrides the webhook', 'sandbox-1',
        environment => 'sandbox-z', is_environment_primary => 0],
    ['/env', 'dato_environment on a primary webhook', 'sandbox-1',
        environment => 'main', is_environment_primary => 1],
) {
    my ($path, $name, $want, %wh) = @$c;
    $t->mock_reset;
    my $id = uuid_id(300 + length $name);
    check_accepted(post($path, hook($id, %wh)), 1, $name);
    my @p = $t->publishes;
    my $h = $p[0] ? $p[0]{headers} : {};
    is(scalar @p, 1, "$name: one call");
    if (defined $want) {
        is($h->{'x-environment'}, $want, "$name: X-Environment: $want");
    } else {
        ok(!exists $h->{'x-environment'}, "$name: no X-Environment");
    }
    is_deeply($p[0] && $p[0]{ids}, [$id], "$name: record sent");
}

$t->mock_reset;
my %env = (A => ['sandbox-a', uuid_id(401)],
           B => ['sandbox-b', uuid_id(402)],
           C => [undef,       uuid_id(403)]);
@r = map { kept($_) } $t->parallel_requests([ map {
    post_req('/none', hook($env{$_}[1], environment => $env{$_}[0] // 'main',
                           is_environment_primary => defined $env{$_}[0] ? 0 : 1))
    } sort keys %env ]);
is(scalar(grep { $_->{status} == 202 } @r), 3, 'three environments: all 202');
ok($t->wait_for(sub { $t->publishes >= 3 }, 3), 'three environments: calls made');
Time::HiRes::sleep(0.5);
@p = $t->publishes;
is(scalar @p, 3, 'three environments in one window: three calls');
is_deeply({ map { (($_->{headers}{'x-environment'} // '(none)') => $_->{ids}) } @p },
          { 'sandbox-a' => [$env{A}[1]], 'sandbox-b' => [$env{B}[1]],
            '(none)' => [$env{C}[1]] },
          'three environments: each call carries only its own ids');

###########################################################################
# secrets

is(scalar(grep { /test-token/ } @bodies), 0, 'no response body contains the token');
ok(scalar @bodies > 40, 'response bodies were collected');

$t->stop;
$t->log_unlike(qr/test-token/, 'error.log does not contain the token');

$t->done;
done_testing;
