#!/usr/bin/perl

# The API rate limit shared by all workers: the call log in shared memory,
# 429 pauses that hold every worker, and batches that fill up while they
# wait.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use DatoTest qw(ids_of ids_body post_req max_in_window);

# nginx with one worker whose batches hold one record each, under a rate
# limit, and a mock API that would take many more calls
sub single_record_batches {
    my ($limit) = @_;
    my $t = DatoTest->with_mock(workers => 1, mock => ['--limit', '1000'],
                                server => <<"EOF");
        location /hook {
            dato_publish;
            dato_publish_wait none;
            dato_batch_size 1;
            dato_batch_window 10ms;
            dato_rate_limit $limit;
            dato_job_poll off;
        }
EOF
    return $t;
}

###########################################################################
# 1. a burst of 5,000 records over 2 workers: full batches, few calls

{
    my $t = DatoTest->with_mock(workers => 2, mock => [qw(--limit 60 --window 3)],
                                server => <<'EOF');
        location /hook { dato_publish; dato_publish_wait none; }
EOF

    my @reqs = map { post_req('/hook', ids_body(ids_of(100000 + $_ * 200, 200))) } 0 .. 24;
    my @res = $t->parallel_requests(\@reqs, timeout => 20);

    is(scalar(grep { $_->{status} == 202 } @res), 25,
       'burst: 25 webhooks of 200 records answered 202');

    ok($t->wait_published(20, ids_of(100000, 5000)), 'burst: all 5,000 records published');

    my @p = $t->publishes;
    is(scalar(grep { $_->{status} == 429 } @p), 0, 'burst: no 429');
    cmp_ok(scalar(@p), '<=', 27, 'burst: at most ceil(5000/200) + 2 calls');
    cmp_ok(max_in_window(3, @p), '<', 60, 'burst: under 60 calls per 3 s');

    $t->done;
}

###########################################################################
# 2. small batches: the shared log holds 2 workers to dato_rate_limit

{
    # reuseport: the kernel spreads the connections over both workers
    my $t = DatoTest->with_mock(workers => 2, mock => [qw(--limit 60 --window 3)],
                                listen => 'reuseport',
                                server => <<'EOF');
        location /hook {
            dato_publish;
            dato_publish_wait none;
            dato_batch_size 20;
            dato_batch_window 50ms;
            dato_rate_limit 20 2s;
        }
EOF

    # 1,000 records in calls of 20: 50 calls, 20 per 2 s, about 5 s

    my @reqs = map { post_req('/hook', ids_body(ids_of(200000 + $_ * 100, 100))) } 0 .. 9;
    my $t0 = Time::HiRes::time();
    my @res = $t->parallel_requests(\@reqs, timeout => 20);

    is(scalar(grep { $_->{status} == 202 } @res), 10,
       'limited: 10 webhooks answered 202');

    ok($t->wait_published(20, ids_of(200000, 1000)), 'limited: all 1,000 records published');

    my @p = $t->publishes;
    is(scalar(grep { $_->{status} == 429 } @p), 0, 'limited: no 429');
    cmp_ok(max_in_window(2, @p), '<=', 20,
           'limited: at most 20 calls in any 2 s, both workers together');
    cmp_ok($p[-1]{t} - $p[0]{t}, '>=', 3.9,
           'limited: 50 calls took at least two periods');

    my %workers;
    my $log = $t->error_log;
    $workers{$1}++ while $log =~ /\[info\] (\d+)#\d+: dato: \d+ records? sent/g;
    is(scalar(keys %workers), 2, 'limited: both workers sent calls');

    $t->done;
}

###########################################################################
# 3. a forced 429 pauses every call until X-RateLimit-Reset has passed, and
#    records that arrive meanwhile make one fuller batch

{
    my $t = DatoTest->with_mock(workers => 1, mock => ['--limit', '1000'],
                                server => <<'EOF');
        location /hook {
            dato_publish;
            dato_publish_wait none;
            dato_batch_window 100ms;
        }
        location /job {
            dato_publish;
            dato_batch_window 100ms;
            dato_publish_timeout 6s;
        }
EOF

    $t->mock_faults([{ status => 429, reset => 2 }]);

    my $r = $t->post_json('/hook', ids_body(ids_of(300000, 1)));
    is($r->{status}, 202, '429: first webhook queued');

    ok($t->wait_for(sub { scalar($t->publishes) >= 1 }, 5),
       '429: first call made');

    my ($first) = $t->publishes;
    is($first->{status}, 429, '429: the mock refused it');

    # records that arrive during the pause

    for my $i (1 .. 10) {
        $r = $t->post_json('/hook', ids_body(ids_of(300000 + $i, 1)));
        Time::HiRes::sleep(0.1);
    }

    ok($t->wait_published(8, ids_of(300000, 11)), '429: every record published after it');

    my @p = $t->publishes;
    my @after = grep { $_->{t} > $first->{t} } @p;

    cmp_ok($after[0]{t} - $first->{t}, '>=', 1.95,
           '429: no call before X-RateLimit-Reset has passed');
    is(scalar(@after), 2,
       '429: the retry and one call for the 10 records of the pause');

    my ($fuller) = grep { @{ $_->{ids} } == 10 } @after;
    ok($fuller, '429: the 10 records of the pause went in one call');

    $t->log_like(qr/\[warn\].*dato: bulk publish of 1 record failed \(429 RATE_LIMIT_EXCEEDED\), retrying/,
                 '429: the retry is logged');

    # a webhook that waits for its job gets it after the pause

    $t->mock_faults([{ status => 429, reset => 1 }]);

    $r = $t->post_json('/job', ids_body(ids_of(300100, 1)));
    is($r->{status}, 202, '429: waiting webhook answered 202');
    is($r->{json}{meta}{status}, 'accepted', '429: ... with its job');
    like($r->{json}{data}[0]{id} // '', qr/^\d+$/, '429: ... and a job id');
    cmp_ok($r->{elapsed}, '>=', 0.9, '429: ... after the pause');

    $t->done;
}

###########################################################################
# 4. an API that allows 5 calls per second and says so: the module plans
#    with what it announces, not with the default, and none is refused

{
    my $t = DatoTest->with_mock(workers => 2, mock => [qw(--limit 5 --window 1)],
                                server => <<'EOF');
        location /hook {
            dato_publish;
            dato_publish_wait none;
            dato_batch_size 1;
            dato_batch_window 10ms;
        }
EOF

    my @reqs = map { post_req('/hook', ids_body(ids_of(400000 + $_, 1))) } 0 .. 19;
    my @res = $t->parallel_requests(\@reqs, timeout => 20);

    is(scalar(grep { $_->{status} == 202 } @res), 20,
       'storm: 20 webhooks answered 202');

    ok($t->wait_published(25, ids_of(400000, 20)), 'storm: all 20 records published');

    my @p = $t->publishes;
    is(scalar(grep { $_->{status} == 429 } @p), 0,
       'storm: no 429: the announced limit holds the calls');
    $t->log_unlike(qr/gave up/, 'storm: nothing given up');

    $t->done;
}

###########################################################################
# 5. the line: batches held by the rate limit go out in the order they came
#    (one worker; 4 calls per 2 s, so 6 of 10 single-record batches wait)

{
    my $t = single_record_batches('4 2s');

    my @ids = ids_of(500000, 10);
    my $sent = 0;
    for my $id (@ids) {
        my $r = $t->request(%{ post_req('/hook', ids_body($id)) });
        $sent++ if $r->{status} == 202;
    }
    is($sent, 10, 'line: 10 webhooks answered 202, one after the other');

    ok($t->wait_published(15, @ids), 'line: all 10 records published');

    # the first burst of 4 leaves together and may reach the mock in any
    # order; after it, the pace spaces the calls (a full window leaves no
    # burst credit), and the line sends the oldest waiting record each time

    my @p = $t->publishes;
    my @seen = map { @{ $_->{ids} || [] } } @p;
    is(join(' ', sort @seen[0 .. 3]), join(' ', sort @ids[0 .. 3]),
       'line: the first burst took the first 4 records');
    is("@seen[4 .. $#seen]", "@ids[4 .. 9]",
       'line: then one call per pace, oldest record first');
    cmp_ok(max_in_window(2, @p), '<=', 4, 'line: at most 4 calls in any 2 s');
    is(scalar(grep { $_->{status} == 429 } @p), 0, 'line: no 429');

    $t->done;
}

###########################################################################
# 6. the pace: after a burst of a quarter of the limit (here 5 of 20 per
#    4 s), calls leave one per period / limit (200 ms), not all at once

{
    my $t = single_record_batches('20 4s');

    my @ids = ids_of(600000, 12);
    my @reqs = map { post_req('/hook', ids_body($_)) } @ids;
    my @res = $t->parallel_requests(\@reqs, timeout => 10);
    is(scalar(grep { $_->{status} == 202 } @res), 12, 'pace: 12 webhooks answered 202');

    ok($t->wait_published(15, @ids), 'pace: all 12 records published');

    my @ts = map { $_->{t} } $t->publishes;
    is(scalar @ts, 12, 'pace: 12 calls');

    # calls i and j > i, as the mock saw them: at most 5 at once, one more
    # per 200 ms, whenever the webhooks came; the slack is for the time a
    # call takes to reach the mock, longer for a new connection (and much
    # longer under valgrind)
    my $slack = $t->{valgrind} ? 0.3 : 0.1;
    my @fast;
    for my $i (0 .. $#ts) {
        for my $j ($i + 5 .. $#ts) {
            my $least = ($j - $i - 4) * 0.2 - $slack;
            push @fast, sprintf('%d-%d: %.3f s', $i + 1, $j + 1, $ts[$j] - $ts[$i])
                if $ts[$j] - $ts[$i] < $least;
        }
    }
    ok(!@fast, 'pace: a burst of 5 at most, then one call per 200 ms')
        or diag 'too close: ' . join(', ', @fast) . '; calls at '
                . join(' ', map { sprintf '%.3f', $_ - $ts[0] } @ts);
    cmp_ok($ts[-1] - $ts[0], '<', 3.5,
           'pace: all 12 within a period (20 per 4 s allow them all)');

    $t->done;
}

done_testing;
