import remotior_sensus

calls = []


def progress(**kwargs):
    calls.append(kwargs)


rs = remotior_sensus.Session(n_processes=2, available_ram=1000, progress_callback=progress)
output = rs.band_erosion(
    input_bands=["$DATA/lc/classes.tif"],
    value_list=[3],
    size=1,
    output_path="$DATA/out/session_progress_callback",
)
print(output.check)
print(output.paths)
print(len(calls) > 0 and any(c.get("end") for c in calls))
rs.close()
