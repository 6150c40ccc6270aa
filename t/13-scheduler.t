#!/usr/bin/perl

# The API call scheduler: the budget is what the API announces
# (X-RateLimit-Limit / -Remaining, less a margin, dato_rate_limit a cap),
# kept per token in the shared zone for every token of the configuration;
# a batch asks for its call at once (dato_batch_window 0) and keeps taking
# records while the scheduler holds it; X-RateLimit-Reset as seconds or a
# Unix time, pauses capped at 60 s; a held batch gives up at
# dato_retry_timeout; a worker killed with its calls out holds no budget;
# dato_zone_size; rate_limit.{limit,announced,remaining} on the status page.
#
# Assertions count and order events; the few time bounds are generous and
# grow under valgrind.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use POSIX qw(ceil);
use DatoTest qw(ids_of hook ids_body post_req max_in_window);

# time bounds grow under valgrind
my $SLOW = $ENV{TEST_NGINX_USE_VALGRIND} ? 4 : 1;

###########################################################################
# helpers

# the mock, its token, and $loc in a server; reuseport: the kernel spreads
# the connections over the workers
sub conf {
    my ($loc, %a) = @_;
    return DatoTest::api_conf(server => $loc, http => $a{http},
                              listen => 'reuseport');
}

# every API request the mock answered 429 (publish calls and job polls)
sub rejected {
    my ($tt) = @_;
    return grep { $_->{status} == 429 } $tt->mock_requests;
}

# for a failed bound on 429s: when each came, after how many API requests
sub rejected_diag {
    my ($tt) = @_;
    my @r = sort { $a->{t} <=> $b->{t} } $tt->mock_requests;
    return 'no API requests' unless @r;
    my @d;
    for my $k (0 .. $#r) {
        next unless $r[$k]{status} == 429;
        push @d, sprintf('request %d at %.3f s', $k + 1, $r[$k]{t} - $r[0]{t});
    }
    return scalar(@d) . ' answered 429: ' . join(', ', @d);
}

# the ids among @ids in more than one call answered 202
sub published_twice {
    my ($tt, @ids) = @_;
    my $n = DatoTest::published_ids($tt->calls_for(@ids));
    return grep { ($n->{$_} // 0) > 1 } @ids;
}

sub status_json {
    my ($tt) = @_;
    my $r = $tt->json_request(method => 'GET', path => '/status');
    return $r->{json} || {};
}

# a flood of $n records from uuid_id($from) on, in webhooks of 100 to
# $tt's /hook: requests for parallel_requests()
sub flood_reqs {
    my ($tt, $from, $n) = @_;
    return map { post_req('/hook', ids_body(ids_of($from + $_ * 100, 100)),
                          port => $tt->port) } 0 .. $n / 100 - 1;
}

###########################################################################
# a. no dato_rate_limit, the API allows 30 per 3 s: the module keeps under
#    what the API announces (job polls included), at most one 429

{
    my $t = DatoTest->with_mock(workers => 2, mock => [qw(--limit 30 --window 3)],
                                http => conf(<<'EOF'));
        location /hook {
            dato_publish;
            dato_publish_wait none;
            dato_batch_size 20;
        }
EOF

    # 1,200 records in calls of 20: 60 calls and 60 job polls, about 12 s
    my @ids = ids_of(1_000_000, 1200);
    my @res = $t->parallel_requests([ flood_reqs($t, 1_000_000, 1200) ],
                                    timeout => 20 * $SLOW);
    is(scalar(grep { $_->{status} == 202 } @res), 12,
       'announced 30/3s: 12 webhooks of 100 records answered 202');

    ok($t->wait_published(60 * $SLOW, @ids),
       'announced 30/3s: all 1,200 records published');

    my @no = rejected($t);
    cmp_ok(scalar @no, '<=', 1, 'announced 30/3s: at most one 429 (publish calls and polls)')
        or diag rejected_diag($t);
    is(scalar(published_twice($t, @ids)), 0, 'announced 30/3s: each record published once');
    is(scalar($t->gave_up_lines), 0, 'announced 30/3s: nothing given up');

    $t->done;
}

###########################################################################
# b. the same with an API that allows 10 per 3 s (the default 50 would
#    overrun it five times)

{
    my $t = DatoTest->with_mock(workers => 2, mock => [qw(--limit 10 --window 3)],
                                http => conf(<<'EOF'));
        location /hook {
            dato_publish;
            dato_publish_wait none;
            dato_batch_size 20;
            dato_job_poll off;
        }
EOF

    # 500 records in calls of 20: 25 calls at 9 per 3 s, about 8 s
    my @ids = ids_of(1_100_000, 500);
    my @res = $t->parallel_requests([ flood_reqs($t, 1_100_000, 500) ],
                                    timeout => 20 * $SLOW);
    is(scalar(grep { $_->{status} == 202 } @res), 5,
       'announced 10/3s: 5 webhooks of 100 records answered 202');

    ok($t->wait_published(60 * $SLOW, @ids), 'announced 10/3s: all 500 records published');

    my @no = rejected($t);
    cmp_ok(scalar @no, '<=', 1, 'announced 10/3s: at most one 429')
        or diag rejected_diag($t);
    is(scalar(published_twice($t, @ids)), 0, 'announced 10/3s: each record published once');
    is(scalar($t->gave_up_lines), 0, 'announced 10/3s: nothing given up');

    $t->done;
}

###########################################################################
# c. two nginx instances, one token, one API (20 per 3 s): each sees the
#    calls of the other as a lower X-RateLimit-Remaining and backs off.
#    "warm": each instance has had one answer before the floods; "cold":
#    both floods start at once, before either has heard from the API.
#    At most 2 429s in all (one per instance) either way.

for my $mode ('warm', 'cold') {
    my $t1 = DatoTest->new(workers => 1);
    my $t2 = DatoTest->new(workers => 1);
    $t1->start_mock('--limit', '20', '--window', '3');
    my $loc = <<'EOF';
        location /hook {
            dato_publish;
            dato_publish_wait none;
            dato_batch_size 20;
            dato_job_poll off;
        }
EOF
    $t1->run(http => conf($loc));
    # the second instance calls the first one's mock
    (my $conf2 = conf($loc)) =~ s/%%MOCK%%/$t1->mock_url/e;
    $t2->run(http => $conf2);

    my $base = $mode eq 'warm' ? 1_200_000 : 1_250_000;
    my @warm;
    if ($mode eq 'warm') {
        @warm = ids_of($base + 10_000, 2);
        $t1->post_json('/hook', ids_body($warm[0]));
        $t2->post_json('/hook', ids_body($warm[1]));
        ok($t1->wait_published(10 * $SLOW, @warm), "shared token, $mode: one call each first");
    }

    # 2 x 400 records in calls of 20: 40 calls at 19 per 3 s, about 6 s
    my @ids1 = ids_of($base, 400);
    my @ids2 = ids_of($base + 100_000, 400);
    my @res = $t1->parallel_requests([ flood_reqs($t1, $base, 400),
                                       flood_reqs($t2, $base + 100_000, 400) ],
                                     timeout => 20 * $SLOW);
    is(scalar(grep { $_->{status} == 202 } @res), 8,
       "shared token, $mode: 8 webhooks answered 202, 4 by each instance");

    ok($t1->wait_published(60 * $SLOW, @ids1, @ids2),
       "shared token, $mode: all 800 records of both instances published");

    my @no = rejected($t1);
    cmp_ok(scalar @no, '<=', 2, "shared token, $mode: at most 2 429s in all")
        or diag rejected_diag($t1);
    is(scalar(published_twice($t1, @warm, @ids1, @ids2)), 0,
       "shared token, $mode: each record published once");
    is(scalar($t1->gave_up_lines) + scalar($t2->gave_up_lines), 0,
       "shared token, $mode: nothing given up");

    $t2->done;
    $t1->done;
}

###########################################################################
# d. X-RateLimit-Reset as a Unix time (1700000000, in the past): the pause
#    is capped at 60 s and publishing goes on; one [warn] for the token

{
    my $t = DatoTest->with_mock(workers => 1, http => conf(<<'EOF'));
        location /hook {
            dato_publish;
            dato_publish_wait none;
        }
EOF

    $t->mock_faults([ { status => 429, reset => 1700000000 },
                      { status => 429, reset => 1700000000 } ]);

    my $id = DatoTest::uuid_id(1_400_000);
    my $t0 = Time::HiRes::time();
    is($t->post_json('/hook', ids_body($id))->{status}, 202,
       'reset as a Unix time: webhook answered 202');

    ok($t->wait_published(65 * $SLOW, $id),
       'reset as a Unix time: the record published within the 60 s cap');
    my ($pub) = grep { $_->{status} == 202 } $t->calls_for($id);
    diag(sprintf 'published %.1f s after the webhook', $pub->{t} - $t0) if $pub;
    is(join(' ', map { $_->{status} } $t->calls_for($id)), '429 429 202',
       'reset as a Unix time: two 429s, then the 202');

    my @warn = grep { /\[warn\].*X-RateLimit-Reset "1700000000"/ }
               split /\n/, $t->error_log;
    is(scalar @warn, 1, 'reset as a Unix time: one [warn] naming X-RateLimit-Reset "1700000000"')
        or diag join "\n", @warn;

    $t->done;
}

###########################################################################
# e. a 429 pause (30 s) longer than dato_retry_timeout (2 s): the batches
#    held by it give up at dato_retry_timeout, by ID, long before it ends

{
    my $t = DatoTest->with_mock(workers => 1, http => conf(<<'EOF'));
        location /hook {
            dato_publish;
            dato_publish_wait none;
            dato_retry_timeout 2s;
        }
EOF

    $t->mock_faults([ { status => 429, reset => 30 } ]);

    my ($ida, $idb) = ids_of(1_500_000, 2);
    my $t0 = Time::HiRes::time();
    is($t->post_json('/hook', ids_body($ida))->{status}, 202, 'held by a pause: webhook A 202');
    ok($t->wait_for(sub { scalar $t->calls_for($ida) }, 5 * $SLOW),
       'held by a pause: A\'s call made');
    is(join(' ', map { $_->{status} } $t->publishes), '429',
       'held by a pause: ... and answered 429 (reset 30)');

    # a record that comes during the pause
    Time::HiRes::sleep(0.3);
    is($t->post_json('/hook', ids_body($idb))->{status}, 202, 'held by a pause: webhook B 202');

    ok($t->wait_for(sub { my $g = $t->gave_up_ids; $g->{$ida} && $g->{$idb} }, 12 * $SLOW, 0.1),
       'held by a pause: A and B given up by ID within 12 s of A (the pause lasts 30 s)')
        and diag(sprintf 'given up %.1f s after webhook A', Time::HiRes::time() - $t0);

    my @lines = grep { /\[error\].*gave up publishing/ } $t->gave_up_lines;
    ok(@lines && !grep({ !/dato_retry_timeout has passed/ } @lines),
       'held by a pause: [error] "gave up publishing ... (dato_retry_timeout has passed ...)"')
        or diag join "\n", $t->gave_up_lines;
    is(scalar($t->published($ida, $idb)), 0, 'held by a pause: neither published');
    is(scalar($t->publishes), 1, 'held by a pause: no call during the pause');
    $t->promise_ok('held by a pause', $ida, $idb);

    $t->done;
}

###########################################################################
# f. kill -9 of the workers with calls out (answers delayed 20 s, a budget
#    of 2 calls, dato_api_timeout 30s): the calls of new webhooks reach the
#    API within seconds, not when the dead calls would have timed out.  A
#    first call W, answered at once, makes the API's limit known (until
#    then the scheduler may hold calls for the first answer).

{
    my $t = DatoTest->with_mock(workers => 2, mock => ['--limit', '1000'],
                                http => conf(<<'EOF', http => "    log_format p '\$pid';"));
        location /hook {
            dato_publish;
            dato_publish_wait none;
            dato_batch_size 1;
            dato_rate_limit 2 3s;
            dato_api_timeout 30s;
            dato_job_poll off;
            access_log %%TMP%%/pids.log p;
        }
EOF
    $t->allow_log(qr/worker process \d+ exited on signal 9/);

    my $pids_log = sub { grep { /^\d+$/ } split /\n/, ($t->read_file('pids.log') // '') };

    my ($idw, $ida, $idb, $idc, $idd) = ids_of(1_600_000, 5);
    is($t->post_json('/hook', ids_body($idw))->{status}, 202, 'kill -9: webhook W 202');
    ok($t->wait_published(5 * $SLOW, $idw), 'kill -9: W published, the API\'s limit known');
    my $seen = () = $pids_log->();

    $t->mock_faults([ { delay_ms => 20000 }, { delay_ms => 20000 } ]);

    is($t->post_json('/hook', ids_body($ida))->{status}, 202, 'kill -9: webhook A 202');
    is($t->post_json('/hook', ids_body($idb))->{status}, 202, 'kill -9: webhook B 202');
    # B waits for W's period to pass (2 calls in 3 s)
    ok($t->wait_for(sub { $t->calls_for($ida, $idb) == 2 }, 8 * $SLOW),
       'kill -9: A and B out (the whole budget), answers delayed 20 s');

    my @taken = $pids_log->();
    my %pids = map { $_ => 1 } @taken[$seen .. $#taken];
    my @pids = sort keys %pids;
    my %workers = map { $_ => 1 } $t->worker_pids;
    ok(@pids && !grep({ !$workers{$_} } @pids),
       'kill -9: the workers that took A and B: ' . join(' ', @pids));

    my $mark = $t->log_mark;
    kill 'KILL', @pids;
    ok($t->wait_for(sub { !grep { kill 0, $_ } @pids }, 5), 'kill -9: they are gone');
    ok($t->wait_for(sub {
           my $n = () = $t->error_log_since($mark) =~ /start worker process \d+/g;
           $n >= @pids }, 10 * $SLOW),
       'kill -9: the master started new workers');

    my $t0 = Time::HiRes::time();
    is($t->post_json('/hook', ids_body($idc))->{status}, 202, 'kill -9: webhook C 202');
    is($t->post_json('/hook', ids_body($idd))->{status}, 202, 'kill -9: webhook D 202');
    ok($t->wait_published(8 * $SLOW, $idc, $idd),
       'kill -9: C and D published within 8 s (the dead calls hold no budget)')
        and diag(sprintf 'published %.1f s after webhook C', Time::HiRes::time() - $t0);

    $t->done;
}

###########################################################################
# g. 20 tokens in one configuration: each has its own budget in the zone
#    (dato_rate_limit 2 3s each: 2 calls at once, the third a period
#    later); and a dato_zone_size too small for them fails nginx -t

{
    my $n = 20;
    my @tokens = map { sprintf 'sched-token-%02d', $_ } 1 .. $n;
    my $t = DatoTest->new(workers => 1);
    $t->start_mock('--limit', '1000', map { ('--token', $_) } @tokens);

    my $locs = join '', map { <<"EOF" } 1 .. $n;
        location /hook$_ {
            dato_publish;
            dato_api_token $tokens[$_ - 1];
            dato_publish_wait none;
            dato_batch_size 1;
            dato_rate_limit 2 3s;
            dato_job_poll off;
        }
EOF

    my ($rc, $out) = $t->test_conf(http => conf($locs, http => '    dato_zone_size 32k;'));
    isnt($rc, 0, '20 tokens: nginx -t fails with dato_zone_size 32k');
    my ($emerg) = grep { /\[emerg\]/ } split /\n/, $out;
    ok(defined $emerg && $emerg =~ /dato_zone_size/ && $emerg =~ /\b32k\b/
       && $emerg !~ /unknown directive/,
       '20 tokens: ... with an [emerg] naming dato_zone_size and 32k')
        or diag $out;
    ($rc, $out) = $t->test_conf(http => conf($locs, http => '    dato_zone_size 512k;'));
    is($rc, 0, '20 tokens: nginx -t passes with dato_zone_size 512k') or diag $out;

    $t->run(http => conf($locs));

    # three rounds of one webhook per location, as fast as they go
    my @ids;
    my $ok = 0;
    for my $round (0 .. 2) {
        for my $k (1 .. $n) {
            my $id = DatoTest::uuid_id(1_700_000 + $round * 100 + $k);
            push @ids, $id;
            $ok++ if $t->post_json("/hook$k", ids_body($id))->{status} == 202;
        }
    }
    is($ok, 3 * $n, '20 tokens: 60 webhooks answered 202');
    ok($t->wait_published(20 * $SLOW, @ids), '20 tokens: all 60 records published');

    my %by;
    for my $p ($t->publishes) {
        my ($tok) = ($p->{headers}{authorization} // '') =~ /^Bearer (.*)$/;
        push @{ $by{$tok // '?'} }, $p;
    }
    is(join(' ', sort keys %by), join(' ', @tokens), '20 tokens: each token made calls');

    # the mock sees a call a little after it left: 0.5 s of slack on 3 s
    my (@count, @late, @early);
    for my $k (1 .. $n) {
        my @c = @{ $by{ $tokens[$k - 1] } || [] };
        if (@c != 3) { push @count, "$k: " . scalar(@c); next }
        push @late, sprintf('%d: %.2f s', $k, $c[1]{t} - $c[0]{t}) if $c[1]{t} - $c[0]{t} >= 2.5;
        push @early, sprintf('%d: %.2f s', $k, $c[2]{t} - $c[0]{t}) if $c[2]{t} - $c[0]{t} < 2.5;
    }
    ok(!@count, '20 tokens: 3 calls for each token') or diag 'calls: ' . join(', ', @count);
    ok(!@late, '20 tokens: each token made 2 calls in its first period')
        or diag 'second call late: ' . join(', ', @late);
    ok(!@early, '20 tokens: each token\'s third call waited for its own period')
        or diag 'third call after: ' . join(', ', @early);
    is(scalar(grep { $_->{status} != 202 } $t->publishes), 0, '20 tokens: every call answered 202');

    $t->done;
}

###########################################################################
# h. a lone webhook's call leaves at once: a webhook sent after its 202 is
#    not in its call (a batch window would have put both in one call)

{
    my $t = DatoTest->with_mock(workers => 1, http => conf(<<'EOF'));
        location /hook {
            dato_publish;
            dato_publish_wait none;
        }
EOF

    for my $k (0 .. 2) {
        my ($ida, $idb) = ids_of(1_800_000 + $k * 10, 2);
        my $ra = $t->post_json('/hook', ids_body($ida));
        my $rb = $t->post_json('/hook', ids_body($idb));
        is($ra->{status} . ' ' . $rb->{status}, '202 202',
           "no window, pair $k: A answered 202, then B 202");
        ok($t->wait_published(5 * $SLOW, $ida, $idb), "no window, pair $k: both published");
        my @ca = $t->calls_for($ida);
        ok(@ca && !grep({ grep { $_ eq $idb } @{ $_->{ids} } } @ca),
           "no window, pair $k: A's call left without B")
            or diag 'calls: ' . join(' | ', map { join ' ', @{ $_->{ids} } } $t->calls_for($ida, $idb));
    }

    $t->done;
}

###########################################################################
# i. the status page: rate_limit.announced (X-RateLimit-Limit), .limit (the
#    announced limit less ceil(limit / 30), or dato_rate_limit if lower),
#    .remaining (X-RateLimit-Remaining)

for my $case ([ 'no dato_rate_limit', '', 50, 60 - ceil(60 / 30) ],
              [ 'dato_rate_limit 20 3s', '    dato_rate_limit 20 3s;', 20, 20 ])
{
    my ($name, $directive, $before, $after) = @$case;
    # dato_rate_limit at http level: the one token's cap, in every location
    my $t = DatoTest->with_mock(workers => 1, mock => ['--limit', '60'],
                                http => conf(<<'EOF', http => $directive));
        location /hook {
            dato_publish;
            dato_job_poll off;
        }
        location /status {
            dato_publish_status;
        }
EOF

    my $s = status_json($t);
    is($s->{rate_limit}{announced}, 0, "status, $name: rate_limit.announced 0 before any call");
    is($s->{rate_limit}{limit}, $before, "status, $name: rate_limit.limit $before before any call");

    # publish_wait job: answered once the call is
    my $r = $t->post_json('/hook', ids_body(DatoTest::uuid_id(1_900_000)));
    is($r->{status}, 202, "status, $name: webhook answered 202");
    is(scalar($t->mock_requests), 1, "status, $name: one API call");

    $s = status_json($t);
    is($s->{rate_limit}{announced}, 60, "status, $name: rate_limit.announced 60 after it");
    is($s->{rate_limit}{limit}, $after, "status, $name: rate_limit.limit $after");
    is($s->{rate_limit}{remaining}, 59, "status, $name: rate_limit.remaining 59");

    $t->done;
}

done_testing;
