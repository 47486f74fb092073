import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
catalog = rs.bandset_catalog()
bandset = catalog.create_bandset(
    ["$DATA/lc/classes2.tif", "$DATA/lc/classes.tif"], bandset_number=2
)
output = rs.band_dilation(
    input_bands=bandset,
    value_list=[7],
    size=1,
    output_path="$DATA/out/bandset_object_dilation",
    circular_structure=True,
)
print(output.check)
print(output.paths)
print(catalog.get_bandset_count())
rs.close()
