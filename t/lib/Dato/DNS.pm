package Dato::DNS;

# A DNS server of the test's own (t/dns/dns.pl, UDP on 127.0.0.1), for
# "resolver 127.0.0.1:PORT".  Methods of the harness object (DatoTest).
#
#   $t->start_dns(%zone)   starts it, answering from %zone (as dns_set());
#                          returns its port, also $t->dns_port
#   $t->dns_set(%zone)     the answers from now on: name => [addresses],
#                          or 'nxdomain', 'servfail', 'drop' (no answer);
#                          '*' for any other name; unnamed names: NXDOMAIN
#   $t->dns_queries        the queries so far: hashes with t, name, type,
#                          answer (addresses joined by ",", "-" or a kind)
#   $t->stop_dns           stops it (DNS down: queries go unanswered)

use strict;
use warnings;

use Dato::Process qw(start_ready stop_pid free_port);

sub _dns_zone {
    my ($self, %zone) = @_;
    my $text = '';
    for my $n (sort keys %zone) {
        my $v = $zone{$n};
        $text .= "$n " . (ref $v ? join(' ', @$v) : $v) . "\n";
    }
    # a rename: the server never reads half a file
    $self->write_file('dns.zone.tmp', $text);
    rename "$self->{tmp}/dns.zone.tmp", "$self->{tmp}/dns.zone"
        or die "rename dns.zone: $!\n";
}

sub dns_set {
    my ($self, %zone) = @_;
    $self->_dns_zone(%zone);
    return 1;
}

sub start_dns {
    my ($self, %zone) = @_;
    die "dns already running\n" if $self->{dns_pid};
    my $tmp = $self->{tmp};
    $self->_dns_zone(%zone);
    ($self->{dns_pid}, $self->{dns_port}) = start_ready('dns.pl',
        [ $^X, $self->repo_root . '/t/dns/dns.pl',
          '--port', $self->{dns_port} // 0,
          '--zone', "$tmp/dns.zone", '--log', "$tmp/dns.log" ],
        "$tmp/dns.out", "$tmp/dns.err");
    return $self->{dns_port};
}

# the port of the DNS server (kept when it is stopped and started again);
# a free one before it is started
sub dns_port { my $s = shift; $s->{dns_port} //= free_port() }

sub dns_queries {
    my ($self) = @_;
    my @q;
    for my $l (split /\n/, $self->read_file('dns.log') // '') {
        my ($t, $name, $type, $answer) = split ' ', $l;
        push @q, { t => $t, name => $name, type => $type, answer => $answer };
    }
    return @q;
}

sub stop_dns {
    my ($self) = @_;
    my $pid = delete $self->{dns_pid} or return;
    return stop_pid($pid);
}

1;
