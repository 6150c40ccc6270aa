package Dato::Assert;

# Assertions shared by the test files: each runs one or more Test::More
# tests and says what went wrong.  Methods of the harness object
# (DatoTest), and functions over answers.
#
#   $t->log_ok($name)      error.log has no [alert], [crit], [emerg], crashed
#                          worker or sanitizer report (but allow_log()'s)
#   $t->log_like($re, $name), $t->log_unlike($re, $name)
#   $t->valgrind_ok($name) no memory error, no definite leak in the module
#   $t->done               stops nginx, the mock and the DNS server, then
#                          log_ok (and valgrind_ok under valgrind)
#   $t->promise_ok($name, @ids)  one test: each of @ids (answered 2xx)
#                          reached the mock in a call answered 202, or is
#                          named in a "gave up publishing" error.log line
#   check_error($r, $code, $name)  the module's JSON error: status $code
#                          (or one of [@codes]), {"errors":[{"status",
#                          "title","detail"}]}; "code" and "meta" on a 502

use strict;
use warnings;

use Test::More ();
use Exporter 'import';

our @EXPORT_OK = qw(check_error);

sub _min { $_[0] < $_[1] ? $_[0] : $_[1] }

sub log_ok {
    my ($self, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my @bad = ($self->bad_log_lines, @{ $self->{problems} });
    my $ok = Test::More::ok(!@bad, $name // 'error log has no alerts or crashes');
    if (!$ok) {
        @bad = (@bad[0 .. 29], '...') if @bad > 30;
        Test::More::diag(join "\n", @bad);
    }
    return $ok;
}

sub log_like {
    my ($self, $re, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $log = $self->error_log;
    my $ok = Test::More::ok($log =~ $re, $name // "error log matches $re");
    return $ok;
}

sub log_unlike {
    my ($self, $re, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $log = $self->error_log;
    my @m = grep { $_ =~ $re } split /\n/, $log;
    my $ok = Test::More::ok(!@m, $name // "error log does not match $re");
    Test::More::diag(join "\n", @m[0 .. _min(9, $#m)]) unless $ok;
    return $ok;
}

sub valgrind_ok {
    my ($self, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my @bad = $self->valgrind_problems;
    my $ok = Test::More::ok(!@bad, $name // 'valgrind reports no memory errors');
    Test::More::diag(join "\n", @bad[0 .. _min(9, $#bad)]) unless $ok;
    return $ok;
}

sub done {
    my ($self) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    $self->stop if $self->{pid};
    $self->stop_mock if $self->{mock_pid};
    $self->stop_dns if $self->{dns_pid};
    $self->log_ok;
    $self->valgrind_ok if $self->{valgrind};
}


# the promise: every one of @ids (those answered 2xx) reached the mock in a
# call answered 202, or is named in a "gave up publishing" error.log line.
# One test, "$name: all N accepted ids published or given up"; returns
# true if it passed.
sub promise_ok {
    my ($self, $name, @ids) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my %seen;
    @ids = grep { !$seen{$_}++ } @ids;
    my %pub = map { $_ => 1 } $self->published(@ids);
    my $gave = $self->gave_up_ids;
    my @lost = grep { !$pub{$_} && !$gave->{$_} } @ids;
    Test::More::ok(@ids && !@lost, "$name: all " . scalar(@ids)
                                   . ' accepted ids published or given up')
        or Test::More::diag('lost: ' . join(' ', @lost[0 .. _min(9, $#lost)])
                            . (@lost > 10 ? ' ...' : ''));
    return !@lost;
}

# One JSON error object, {"errors":[{"status":"N","title":..,"detail":..}]},
# with "code" (DatoCMS's) and "meta" beside "errors" on a 502.  Eight
# tests; the error object, or undef.
sub check_error {
    my ($r, $code, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my @codes = ref $code ? @$code : ($code);
    my $status = $r->{status} // 0;
    Test::More::ok((grep { $status == $_ } @codes),
                   "$name: " . join('|', @codes))
        or Test::More::diag('got ' . ($status || $r->{error} // '?') . ': '
                            . substr($r->{raw} // '', 0, 600));
    Test::More::is($r->{headers}{'content-type'}, 'application/json',
                   "$name: application/json");
    my $j = $r->{json};
    Test::More::ok(ref $j eq 'HASH' && ref $j->{errors} eq 'ARRAY'
                   && @{ $j->{errors} } == 1 && ref $j->{errors}[0] eq 'HASH',
                   "$name: one error object")
        or return Test::More::diag(substr($r->{body} // '', 0, 600));
    my $e = $j->{errors}[0];
    my @keys = (qw(status title detail), $status == 502 ? 'code' : ());
    my @top = ('errors', $status == 502 ? 'meta' : ());
    Test::More::is_deeply([ sort keys %$j ], [ sort @top ],
                          "$name: " . ($status == 502 ? 'errors and meta'
                                                      : 'only errors'));
    Test::More::is_deeply([ sort keys %$e ], [ sort @keys ],
                          "$name: " . join(', ', @keys));
    Test::More::is($e->{status}, "$status",
                   "$name: status is the string \"$status\"");
    Test::More::like($e->{title} // '', qr/\S/, "$name: title");
    Test::More::like($e->{detail} // '', qr/\S/, "$name: detail");
    return $e;
}

1;
