# Sunrise and sunset from latitude/longitude, so a streetlight keeps its dusk-to-dawn
# schedule without a network: NOAA's "General Solar Position Calculations" (fractional
# year, equation of time, declination, hour angle for the zenith 90.833 deg: refraction
# and the sun's radius), good to a minute or two away from the poles. Dates are computed
# from Unix days with integer arithmetic (no gmtime: the ESP32 port's epoch is 2000).
import math


def civil(days):
    # (year, month, day) of a Unix day number (H. Hinnant's civil_from_days)
    z = days + 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return (y + 1 if m <= 2 else y), m, d


def _leap(y):
    return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)


def day_of_year(days):
    y, m, d = civil(days)
    before = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)[m - 1]
    return before + d + (1 if m > 2 and _leap(y) else 0), y


# (sunrise, sunset) of a Unix day as Unix seconds; None for polar night, (-1, -1) for
# midnight sun. Either may fall on the neighbouring UTC day (east of Greenwich sunrise is
# before 00:00 UTC). One function, few names: each module-level name and argument name is a
# qstr on the light's heap (firmware/README.md, budgets).
def rise_set(days, lat, lon):
    doy, y = day_of_year(days)
    # the equation of time (minutes) and the sun's declination (radians) at 12:00 UTC of
    # the day, for both events (NOAA's simplification; against astral's full algorithm it
    # is within 2 minutes at Shiojiri over two years: tests/test_sun_reference.py)
    g = 2 * math.pi / (366 if _leap(y) else 365) * (doy - 1)  # the fractional year
    eqt = 229.18 * (0.000075 + 0.001868 * math.cos(g) - 0.032077 * math.sin(g)
                    - 0.014615 * math.cos(2 * g) - 0.040849 * math.sin(2 * g))
    decl = (0.006918 - 0.399912 * math.cos(g) + 0.070257 * math.sin(g)
            - 0.006758 * math.cos(2 * g) + 0.000907 * math.sin(2 * g)
            - 0.002697 * math.cos(3 * g) + 0.00148 * math.sin(3 * g))
    # the hour angle of the zenith 90.833 deg (-0.01453... = cos(90.833 deg), folded)
    phi = math.radians(lat)
    x = -0.014538080502496963 / (math.cos(phi) * math.cos(decl)) \
        - math.tan(phi) * math.tan(decl)
    if x > 1:
        return None  # polar night
    if x < -1:
        return -1, -1  # midnight sun
    ha = math.degrees(math.acos(x))
    # minutes UTC of sunrise and sunset
    r = 720 - 4 * (lon + ha) - eqt
    s = 720 - 4 * (lon - ha) - eqt
    base = days * 86400
    return base + int(r * 60), base + int(s * 60)


# Is the sun down at Unix time t? (the day containing t and its neighbours are checked,
# because the local night spans two UTC dates)
def dark(t, lat, lon):
    day = t // 86400
    for d in (day - 1, day, day + 1):
        rs = rise_set(d, lat, lon)
        if rs is None:
            continue
        if rs[0] == -1 or rs[0] <= t < rs[1]:
            return False
    return True
